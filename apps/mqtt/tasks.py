"""Celery tasks, one per message kind; names, queues and priorities come from celery_settings."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from apps.core.circuit_breaker import CircuitBreaker, CircuitOpenError
from apps.core.tasks.base import BusTask, retry_delay, run_batch
from apps.mqtt.consumers import alerts, gps, sensor, system_health, telemetry
from apps.mqtt.downlink import DownlinkError, downlink

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
    breaker = CircuitBreaker("mqtt_broker")
    try:
        breaker.call(lambda: downlink().publish(device_id, command, params or {}))
    except CircuitOpenError as exc:
        raise self.retry(exc=exc, countdown=breaker.reset_timeout) from exc
    except DownlinkError as exc:
        raise self.retry(exc=exc, countdown=retry_delay(self.request.retries)) from exc
