"""Publishing stored device commands, and the beat sweep that ends or resends them.

`send_device_command` publishes one command (apps/devices/commands.py has its states) through
the `mqtt_broker` circuit breaker, once: QUEUED → SENT when the broker acknowledges the QoS 1
publish. A command to an OFFLINE device is not published: it waits, and is sent when the device
is heard from again (presence.py) or expires. Broker failures are retried with backoff while the
command lives. `sweep_device_commands` (beat, every few seconds) expires the commands whose TTL
ran out and sends those left waiting (their first sending was lost).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from celery import Task, shared_task
from django.db import transaction
from django.utils import timezone

from apps.core.circuit_breaker import CircuitBreaker, CircuitOpenError
from apps.core.outbox import broadcast_on_commit
from apps.core.tasks.base import retry_delay, retry_later
from apps.core.tasks.celery_settings import SEND_DEVICE_COMMAND, SWEEP_DEVICE_COMMANDS
from apps.devices import commands
from apps.devices.models import CommandStatus, Device, DeviceCommand
from apps.mqtt.downlink import DownlinkError, downlink

log = structlog.get_logger(__name__)


def _claim(command_id: str, now: datetime) -> DeviceCommand | None:
    """The command, marked as being published by this worker; None when it is not to be sent
    now (gone, no longer QUEUED, expired, its device offline, or another worker on it)."""
    with transaction.atomic():
        command = (
            DeviceCommand.objects.select_for_update(of=("self",))
            .select_related("device")
            .filter(pk=command_id)
            .first()
        )
        if command is None or command.status != CommandStatus.QUEUED:
            return None
        if command.expires_at <= now:
            broadcast_on_commit(
                [commands.move(command, CommandStatus.EXPIRED, note="expired before it was sent")]
            )
            return None
        if command.device.status == Device.Status.OFFLINE:
            log.info(
                "device command waits: its device is offline",
                command_id=command_id,
                device_id=command.device.device_id,
                expires_at=command.expires_at.isoformat(),
            )
            return None
        if commands.being_published(command, now):
            return None
        command.attempted_at, command.retry_at = now, None
        command.save(update_fields=["attempted_at", "retry_at"])
    return command


def _sent(command_id: str) -> None:
    with transaction.atomic():
        command = (
            DeviceCommand.objects.select_for_update(of=("self",))
            .select_related("device")
            .get(pk=command_id)
        )
        # Not QUEUED any more: the device answered before this worker got the broker's PUBACK.
        if command.status == CommandStatus.QUEUED:
            note = "the broker acknowledged the QoS 1 publish"
            broadcast_on_commit([commands.move(command, CommandStatus.SENT, note=note)])


@shared_task(bind=True, name=SEND_DEVICE_COMMAND, acks_late=True, max_retries=None)
def send_device_command(self: Task[Any, Any], command_id: str) -> str:
    """Publish one stored command; what became of it, for the worker's log."""
    command = _claim(command_id, timezone.now())
    if command is None:
        return "not sent now"
    breaker = CircuitBreaker("mqtt_broker")
    try:
        breaker.call(
            lambda: downlink().publish(
                command.device.device_id,
                command.name,
                command.params,
                str(command.pk),
                expires_at=command.expires_at.isoformat(),
            )
        )
    except (CircuitOpenError, DownlinkError) as exc:
        delay = (
            breaker.reset_timeout
            if isinstance(exc, CircuitOpenError)
            else retry_delay(self.request.retries)
        )
        now = timezone.now()
        will_retry = (command.expires_at - now).total_seconds() > delay
        # Not on the wire: it may be cancelled at once. The sweep leaves a planned retry alone.
        DeviceCommand.objects.filter(pk=command.pk).update(
            attempted_at=None, retry_at=now + timedelta(seconds=delay) if will_retry else None
        )
        if not will_retry:
            log.warning(
                "device command not sent; it expires before the next try",
                command_id=command_id,
                device_id=command.device.device_id,
                error=str(exc),
                hint="check the MQTT broker (MQTT_HOST) and `redis-cli GET "
                "circuit_breaker:mqtt_broker`",
            )
            return "left to expire"
        retry_later(self, exc, delay)
    _sent(command_id)
    return "sent"


@shared_task(name=SWEEP_DEVICE_COMMANDS, acks_late=True)
def sweep_device_commands() -> dict[str, int]:
    """Expire the commands whose TTL ran out; send again those left waiting."""
    now = timezone.now()
    with transaction.atomic():
        expired = commands.expire_due(now)
        broadcast_on_commit(expired)
        waiting = commands.left_waiting(now)
        commands.send_on_commit(waiting)
    if expired or waiting:
        log.info("device commands swept", expired=len(expired), sent_again=len(waiting))
    return {"expired": len(expired), "sent_again": len(waiting)}
