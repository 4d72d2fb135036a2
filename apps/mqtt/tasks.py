"""The Celery tasks of ingest: one per topic kind, built from the topic table, and the downlink.

Names, queues and priorities come from apps/core/tasks/celery_settings.py.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from apps.core.circuit_breaker import MQTT_BROKER, CircuitBreaker, CircuitOpenError
from apps.core.tasks.base import BusTask, retry_delay, retry_later, run_batch
from apps.core.tasks.celery_settings import PUBLISH_DEVICE_COMMAND
from apps.mqtt.consumers.base import with_devices
from apps.mqtt.downlink import DownlinkError, check_command, downlink
from apps.mqtt.topics import TOPIC_KINDS, TopicKind


def _processing_task(kind: TopicKind) -> BusTask:
    handler = with_devices(kind.consumer, schema=kind.schema, heartbeat=kind.heartbeat)

    def process(self: BusTask, messages: list[dict[str, Any]]) -> dict[str, int]:
        return run_batch(self, kind.name, handler, messages)

    # Named as its task is (process_device_alerts …), for tracebacks and the worker's log.
    process.__name__ = process.__qualname__ = kind.task.rpartition(".")[2]
    task: BusTask = shared_task(bind=True, base=BusTask, name=kind.task)(process)
    return task


# The processing task of each topic kind, registered with Celery when this module is imported.
PROCESSING_TASKS: dict[str, BusTask] = {kind.name: _processing_task(kind) for kind in TOPIC_KINDS}


@shared_task(bind=True, name=PUBLISH_DEVICE_COMMAND, acks_late=True, max_retries=5)
def publish_device_command(
    self: Task[Any, Any], device_id: str, command: str, params: dict[str, Any] | None = None
) -> None:
    """Send a command to a device, through the `mqtt_broker` circuit breaker, and keep nothing:
    the runbook's probe of the downlink. Operators' commands are stored and followed through
    their states: apps/mqtt/commands.py."""
    check_command(device_id, command, params)  # a bad command is refused, not retried
    breaker = CircuitBreaker(MQTT_BROKER)
    command_id = str(self.request.id)
    try:
        breaker.call(lambda: downlink().publish(device_id, command, params or {}, command_id))
    except CircuitOpenError as exc:
        retry_later(self, exc, breaker.reset_timeout)
    except DownlinkError as exc:
        retry_later(self, exc, retry_delay(self.request.retries))
