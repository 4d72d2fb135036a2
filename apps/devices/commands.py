"""Device commands and their lifecycle (the states and their AWS IoT Jobs and ThingsBoard RPC
names: docs/commands.md).

    QUEUED ──▶ SENT ──▶ DELIVERED ──▶ SUCCEEDED | FAILED   (a device may answer early)
    QUEUED, SENT or DELIVERED ──▶ EXPIRED   (its TTL ran out first)
    QUEUED ──▶ CANCELLED   (by an operator)

The rules a command must meet (name, parameters, TTL) are written here only: the REST API, the
WebSocket and the downlink all check with `check_command`. Each function that changes a command
records the change (DeviceCommandTransition) and returns its `command_updated` event, for the
caller to broadcast after commit (apps/core/outbox.py). Publishing is ingest's
(apps/mqtt/commands.py), asked for by task name once the command's transaction commits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

import structlog
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.events import Event, EventType
from apps.core.tasks.celery_settings import SEND_DEVICE_COMMAND
from apps.devices.models import (
    CommandStatus,
    Device,
    DeviceCommand,
    DeviceCommandTransition,
)
from apps.tenants.models import User

log = structlog.get_logger(__name__)

# The command's name is the last level of its topic, command/<device id>/<name>.
COMMAND_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
COMMAND_NAME_RULE = "1-32 letters, digits, _ or -"
MAX_PARAMS_BYTES = 4096  # as compact JSON; the whole command must fit a small device's buffer
MAX_TTL_SECONDS = 86400
# A worker's publish takes at most the downlink's connect and publish timeouts (5 s each): while
# one may be on the wire, a QUEUED command is not cancelled (it could reach the device anyway).
PUBLISH_WINDOW_SECONDS = 15
# The sweep sends again a QUEUED command of a reachable device left unattempted this long, with
# no retry planned (its sending was lost: Redis down at commit, a worker that died).
SEND_AGAIN_AFTER_SECONDS = 60

PENDING = (CommandStatus.QUEUED, CommandStatus.SENT, CommandStatus.DELIVERED)
# A device may answer before its worker has recorded SENT (the broker's PUBACK and the device's
# answer race), so a QUEUED command may move straight to what the device says.
TRANSITIONS: dict[str, frozenset[str]] = {
    CommandStatus.QUEUED: frozenset(
        {
            CommandStatus.SENT,
            CommandStatus.DELIVERED,
            CommandStatus.SUCCEEDED,
            CommandStatus.FAILED,
            CommandStatus.EXPIRED,
            CommandStatus.CANCELLED,
        }
    ),
    CommandStatus.SENT: frozenset(
        {
            CommandStatus.DELIVERED,
            CommandStatus.SUCCEEDED,
            CommandStatus.FAILED,
            CommandStatus.EXPIRED,
        }
    ),
    CommandStatus.DELIVERED: frozenset(
        {CommandStatus.SUCCEEDED, CommandStatus.FAILED, CommandStatus.EXPIRED}
    ),
    CommandStatus.SUCCEEDED: frozenset(),
    CommandStatus.FAILED: frozenset(),
    CommandStatus.EXPIRED: frozenset(),
    CommandStatus.CANCELLED: frozenset(),
}


class CommandResult(StrEnum):
    """What a device answers on device/<id>/command_ack (apps/devices/messages.py)."""

    DELIVERED = "delivered"  # received, working on it (optional)
    SUCCESS = "success"
    FAILURE = "failure"


RESULT_STATUS = {
    CommandResult.DELIVERED: CommandStatus.DELIVERED,
    CommandResult.SUCCESS: CommandStatus.SUCCEEDED,
    CommandResult.FAILURE: CommandStatus.FAILED,
}


class CommandRefused(ValueError):
    """A command that can never be sent as asked (a 400: no retry helps)."""


class CommandStateError(ValueError):
    """A change the command's state does not allow (a 409)."""


class AnswerIgnored(Exception):
    """A device's answer that changes nothing; `reason` is the metric's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_command(name: object, params: object, ttl_seconds: object = None) -> None:
    """Raise CommandRefused, saying which rule, unless the command may be sent."""
    if not isinstance(name, str) or not COMMAND_NAME_PATTERN.fullmatch(name):
        raise CommandRefused(f"command must be {COMMAND_NAME_RULE}: {name!r}")
    if not isinstance(params, dict):
        raise CommandRefused(f"params must be a JSON object, not {type(params).__name__}")
    try:
        size = len(json.dumps(params, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise CommandRefused(f"params are not plain JSON: {exc}") from None
    if size > MAX_PARAMS_BYTES:
        raise CommandRefused(f"params are {size} bytes as JSON; at most {MAX_PARAMS_BYTES}")
    if ttl_seconds is not None and (
        not isinstance(ttl_seconds, int) or not 1 <= ttl_seconds <= MAX_TTL_SECONDS
    ):
        raise CommandRefused(f"ttl_seconds must be 1 to {MAX_TTL_SECONDS}: {ttl_seconds!r}")


def serialize_command(command: DeviceCommand) -> dict[str, Any]:
    """A command as the NOC shows it (command_updated events; the REST API's fields)."""
    return {
        "command_id": str(command.pk),
        "device_id": command.device.device_id,
        "site": command.device.site,
        "command": command.name,
        "params": command.params,
        "status": command.status,
        "result_detail": command.result_detail,
        "created_at": command.created_at.isoformat(),
        "updated_at": command.updated_at.isoformat(),
        "expires_at": command.expires_at.isoformat(),
    }


def _event(command: DeviceCommand, step: DeviceCommandTransition) -> Event:
    change = {
        "from_status": step.from_status,
        "to_status": step.to_status,
        "by": step.by.username if step.by else None,
        "at": step.at.isoformat(),
        "note": step.note,
    }
    return Event(
        command.tenant_id,
        EventType.COMMAND_UPDATED,
        {**serialize_command(command), "transition": change},
    )


def queue_command(
    device: Device, name: str, params: dict[str, Any], *, ttl_seconds: int | None, by: User | None
) -> tuple[DeviceCommand, Event]:
    """A new QUEUED command to `device` and its event. The caller broadcasts the event and
    then asks for the sending (`send_on_commit`), in that order: on_commit callbacks run in
    order, so QUEUED reaches the NOC before the worker can announce SENT."""
    check_command(name, params, ttl_seconds)
    ttl = ttl_seconds or settings.DEVICE_COMMAND_TTL_SECONDS
    command = DeviceCommand.objects.create(
        tenant_id=device.tenant_id,
        device=device,
        name=name,
        params=params,
        created_by=by,
        expires_at=timezone.now() + timedelta(seconds=ttl),
    )
    step = DeviceCommandTransition.objects.create(
        command=command, to_status=CommandStatus.QUEUED, by=by, note=f"time to live {ttl} s"
    )
    return command, _event(command, step)


def move(
    command: DeviceCommand,
    to_status: str,
    *,
    by: User | None = None,
    note: str = "",
    detail: str | None = None,
) -> Event:
    """Record the command's move to `to_status`; CommandStateError if its state forbids it."""
    if to_status not in TRANSITIONS[command.status]:
        raise CommandStateError(f"a {command.status} command cannot become {to_status}")
    step = DeviceCommandTransition.objects.create(
        command=command, from_status=command.status, to_status=to_status, by=by, note=note
    )
    command.status = to_status
    fields = ["status", "updated_at"]
    if detail is not None:
        command.result_detail = detail
        fields.append("result_detail")
    command.save(update_fields=fields)
    return _event(command, step)


def cancel(command: DeviceCommand, *, by: User) -> Event:
    """An operator withdraws a command that has not left yet."""
    if command.status != CommandStatus.QUEUED:
        raise CommandStateError(
            f"only a QUEUED command can be cancelled; this one is {command.status}"
        )
    if being_published(command, timezone.now()):
        raise CommandStateError(
            "the command is being sent to the device right now; "
            f"try again in {PUBLISH_WINDOW_SECONDS} s if it is still QUEUED"
        )
    return move(command, CommandStatus.CANCELLED, by=by, note="cancelled by an operator")


def being_published(command: DeviceCommand, now: datetime) -> bool:
    window = timedelta(seconds=PUBLISH_WINDOW_SECONDS)
    return command.attempted_at is not None and now - command.attempted_at < window


def answer(
    command: DeviceCommand | None, device: Device, result: CommandResult, detail: str
) -> Event:
    """A device's answer to a command; AnswerIgnored when it may change nothing."""
    if command is None:
        raise AnswerIgnored("unknown_command", "no command has this id")
    if command.device_id != device.pk:
        raise AnswerIgnored("other_device", f"the command was sent to {command.device.device_id}")
    if command.status in (CommandStatus.EXPIRED, CommandStatus.CANCELLED):
        raise AnswerIgnored("too_late", f"the command is {command.status} already")
    target = RESULT_STATUS[result]
    if target not in TRANSITIONS[command.status]:
        raise AnswerIgnored("duplicate", f"the command is {command.status} already")
    return move(command, target, note=f"the device answered {result.value}", detail=detail)


def expire_due(now: datetime, limit: int = 500) -> list[Event]:
    """Every pending command whose TTL ran out becomes EXPIRED (at most `limit` a call)."""
    due = (
        DeviceCommand.objects.select_for_update(of=("self",))
        .select_related("device")
        .filter(status__in=PENDING, expires_at__lte=now)
        .order_by("expires_at")[:limit]
    )
    return [
        move(command, CommandStatus.EXPIRED, note=f"no final answer by {command.expires_at:%X} UTC")
        for command in due
    ]


def left_waiting(now: datetime, limit: int = 500) -> list[UUID]:
    """QUEUED commands of devices not OFFLINE that no worker has tried for a long while."""
    long_ago = now - timedelta(seconds=SEND_AGAIN_AFTER_SECONDS)
    return list(
        DeviceCommand.objects.filter(
            status=CommandStatus.QUEUED, expires_at__gt=now, created_at__lt=long_ago
        )
        .exclude(device__status=Device.Status.OFFLINE)
        .exclude(attempted_at__gte=long_ago)
        .exclude(retry_at__gte=long_ago)  # a retry is planned, or was due only just now
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


def waiting_for(devices: Iterable[Device]) -> list[UUID]:
    """The QUEUED commands of these devices (they are back: apps/mqtt/presence.py)."""
    return list(
        DeviceCommand.objects.filter(
            device__in=[device.pk for device in devices],
            status=CommandStatus.QUEUED,
            expires_at__gt=timezone.now(),
        ).values_list("pk", flat=True)
    )


def send_on_commit(command_ids: list[UUID]) -> None:
    """Hand the commands to the downlink's worker once the current transaction commits."""
    if not command_ids:
        return

    def send() -> None:
        try:
            for command_id in command_ids:
                current_app.send_task(SEND_DEVICE_COMMAND, args=[str(command_id)], retry=False)
        except Exception as exc:  # stored: the sweep sends it later
            log.error(
                "could not queue device commands; the sweep sends them later",
                commands=len(command_ids),
                error=f"{type(exc).__name__}: {exc}",
                hint="check Redis (REDIS_URL)",
            )

    transaction.on_commit(send)
