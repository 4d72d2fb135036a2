"""Operators' device commands: the one path the REST API and the WebSocket both take.

The caller finds the device or command in its user's tenant (another tenant's is not found);
these record the change and broadcast it after commit. CommandRefused (a 400) and
CommandStateError (a 409) come from apps/devices/commands.py.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from apps.core.outbox import broadcast_on_commit
from apps.devices.commands import cancel, queue_command, send_on_commit
from apps.devices.models import Device, DeviceCommand
from apps.tenants.models import User


def tenant_commands(tenant_id: int | None) -> QuerySet[DeviceCommand]:
    if tenant_id is None:
        return DeviceCommand.objects.none()
    return DeviceCommand.objects.filter(tenant_id=tenant_id).select_related("device", "created_by")


def send_command(
    user: User, device: Device, name: str, params: Any, ttl_seconds: int | None
) -> DeviceCommand:
    with transaction.atomic():
        command, event = queue_command(device, name, params, ttl_seconds=ttl_seconds, by=user)
        broadcast_on_commit([event])
        send_on_commit([command.pk])  # after: QUEUED must leave before the worker's SENT
    return command


def cancel_command(user: User, commands: QuerySet[DeviceCommand], command_id: Any) -> DeviceCommand:
    """Cancel the command of `commands` (the caller's tenant's) with this id; DoesNotExist."""
    with transaction.atomic():
        command = commands.select_for_update(of=("self",)).get(pk=command_id)
        broadcast_on_commit([cancel(command, by=user)])
    return command
