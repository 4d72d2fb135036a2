"""device/<id>/command_ack: a device answers a command it was sent (apps/devices/commands.py)."""

from __future__ import annotations

import structlog
from django.db import transaction

from apps.core import metrics
from apps.core.events import Event
from apps.devices.commands import AnswerIgnored, answer
from apps.devices.messages import CommandAckPayload
from apps.devices.models import DeviceCommand
from apps.mqtt.consumers.base import DeviceBatch

log = structlog.get_logger(__name__)


def process(batch: DeviceBatch) -> list[Event]:
    answers = [(e, batch.payload(e, CommandAckPayload)) for e in batch.messages]
    commands = {
        command.pk: command
        for command in DeviceCommand.objects.select_for_update(of=("self",))
        .select_related("device")
        .filter(pk__in={payload.command_id for _, payload in answers})
    }
    events = []
    for envelope, payload in answers:
        device = batch.device(envelope)
        try:
            command = commands.get(payload.command_id)
            events.append(answer(command, device, payload.result, payload.detail))
        except AnswerIgnored as ignored:
            # Counted once committed: a batch retried after a rollback must not count it twice.
            counter = metrics.DEVICE_COMMAND_ACKS_IGNORED.labels(reason=ignored.reason)
            transaction.on_commit(counter.inc)
            log.warning(
                "device answer to a command ignored",
                device_id=device.device_id,
                command_id=str(payload.command_id),
                result=payload.result.value,
                reason=ignored.reason,
                detail=str(ignored),
                hint="the device repeats or misroutes its answers; "
                "see device_command_acks_ignored_total",
            )
    return events
