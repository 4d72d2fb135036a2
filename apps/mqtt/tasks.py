"""Celery tasks, one per message kind; names, queues and priorities come from celery_settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from apps.core.circuit_breaker import CircuitBreaker, CircuitOpenError
from apps.core.models import ProcessedMessage
from apps.core.tasks.base import BusTask, retry_delay, run_batch
from apps.mqtt.consumers import alerts, gps, sensor, system_health, telemetry
from apps.mqtt.downlink import DownlinkError, check_command, downlink

Messages = list[dict[str, Any]]


@shared_task(bind=True, base=BusTask, name="apps.mqtt.tasks.process_device_alerts")
def process_device_alerts(self: BusTask, messages: Messages) -> dict[str, int]:
    return run_batch(self, "alert", alerts.process, messages)


@shared_task(bind=True, base=BusTask, name="apps.mqtt.tasks.process_guard_gps")
def process_guard_gps(self: BusTask, messages: Messages) -> dict[str, int]:
    return run_batch(self, "gps", gps.process, messages)


@shared_task(bind=True, base=BusTask, name="apps.mqtt.tasks.process_device_telemetry")
def process_device_telemetry(self: BusTask, messages: Messages) -> dict[str, int]:
    return run_batch(self, "telemetry", telemetry.process, messages)


@shared_task(bind=True, base=BusTask, name="apps.mqtt.tasks.process_sensor_readings")
def process_sensor_readings(self: BusTask, messages: Messages) -> dict[str, int]:
    return run_batch(self, "sensor", sensor.process, messages)


@shared_task(bind=True, base=BusTask, name="apps.mqtt.tasks.process_system_health")
def process_system_health(self: BusTask, messages: Messages) -> dict[str, int]:
    return run_batch(self, "system_health", system_health.process, messages)


@shared_task(
    bind=True,
    name="apps.mqtt.tasks.publish_device_command",
    acks_late=True,
    max_retries=5,
)
def publish_device_command(
    self: Task[Any, Any], device_id: str, command: str, params: dict[str, Any] | None = None
) -> None:
    """Send a command to a device, through the `mqtt_broker` circuit breaker."""
    check_command(device_id, command)  # a bad command is refused, not retried
    breaker = CircuitBreaker("mqtt_broker")
    command_id = str(self.request.id)
    try:
        breaker.call(lambda: downlink().publish(device_id, command, params or {}, command_id))
    except CircuitOpenError as exc:
        raise self.retry(exc=exc, countdown=breaker.reset_timeout) from exc
    except DownlinkError as exc:
        raise self.retry(exc=exc, countdown=retry_delay(self.request.retries)) from exc


@shared_task(name="apps.mqtt.tasks.prune_processed_messages", acks_late=True)
def prune_processed_messages() -> int:
    """Forget idempotency keys older than IDEMPOTENCY_RETENTION_DAYS (hourly, from beat)."""
    cutoff = timezone.now() - timedelta(days=settings.IDEMPOTENCY_RETENTION_DAYS)
    deleted, _ = ProcessedMessage.objects.filter(processed_at__lt=cutoff).delete()
    return deleted
