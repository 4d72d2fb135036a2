"""The device command lifecycle's rules (apps/devices/commands.py), on the database alone. The
path over the real broker, workers and Daphne: tests/mqtt/test_device_commands.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.devices.commands import (
    AnswerIgnored,
    CommandResult,
    CommandStateError,
    answer,
    cancel,
    expire_due,
    left_waiting,
    queue_command,
)
from apps.devices.models import CommandStatus, Device, DeviceCommand
from tests.factories import create_tenant_with_devices, operator

pytestmark = pytest.mark.django_db


@pytest.fixture
def door() -> Device:
    create_tenant_with_devices("acme", "door-7", "door-8")
    return Device.objects.get(device_id="door-7")


def queued(device: Device, **fields: object) -> DeviceCommand:
    command, _event = queue_command(device, "unlock", {}, ttl_seconds=300, by=None)
    DeviceCommand.objects.filter(pk=command.pk).update(**fields)
    command.refresh_from_db()
    return command


def test_the_sweep_sends_again_only_what_no_worker_holds_or_plans_to_retry(door: Device):
    now = timezone.now()
    long_ago = now - timedelta(minutes=2)
    lost = queued(door, created_at=long_ago)
    retry_was_due = queued(door, created_at=long_ago, retry_at=long_ago)
    being_sent = queued(door, created_at=long_ago, attempted_at=now - timedelta(seconds=10))
    retry_planned = queued(door, created_at=long_ago, retry_at=now + timedelta(seconds=100))
    expired = queued(door, created_at=long_ago, expires_at=now - timedelta(seconds=1))
    queued(door)  # just sent: its first try is under way
    offline = Device.objects.get(device_id="door-8")
    offline.status = Device.Status.OFFLINE
    offline.save()
    queued(offline, created_at=long_ago)

    assert set(left_waiting(now)) == {lost.pk, retry_was_due.pk}
    assert {being_sent.pk, retry_planned.pk, expired.pk}.isdisjoint(left_waiting(now))


def test_pending_commands_past_their_ttl_expire_and_finished_ones_stay(door: Device):
    now = timezone.now()
    due = [
        queued(door, expires_at=now, status=status)
        for status in (CommandStatus.QUEUED, CommandStatus.SENT, CommandStatus.DELIVERED)
    ]
    done = queued(door, expires_at=now, status=CommandStatus.SUCCEEDED)
    alive = queued(door)

    events = expire_due(now)

    assert {event.data["command_id"] for event in events} == {str(c.pk) for c in due}
    assert {event.data["transition"]["from_status"] for event in events} == {
        "QUEUED",
        "SENT",
        "DELIVERED",
    }
    statuses = dict(DeviceCommand.objects.values_list("pk", "status"))
    assert statuses[done.pk] == CommandStatus.SUCCEEDED
    assert statuses[alive.pk] == CommandStatus.QUEUED


def test_a_device_may_answer_before_sent_is_recorded_but_never_twice_or_for_another(
    door: Device,
):
    command = queued(door)
    other = Device.objects.get(device_id="door-8")

    event = answer(command, door, CommandResult.SUCCESS, "done")

    assert event.data["status"] == "SUCCEEDED"
    assert event.data["transition"]["from_status"] == "QUEUED"
    reasons = []
    for who, result, target in (
        (door, CommandResult.FAILURE, command),
        (door, CommandResult.DELIVERED, command),
        (other, CommandResult.SUCCESS, queued(door)),
        (door, CommandResult.SUCCESS, queued(door, status=CommandStatus.EXPIRED)),
        (door, CommandResult.SUCCESS, None),
    ):
        with pytest.raises(AnswerIgnored) as ignored:
            answer(target, who, result, "")
        reasons.append(ignored.value.reason)
    assert reasons == ["duplicate", "duplicate", "other_device", "too_late", "unknown_command"]
    assert DeviceCommand.objects.get(pk=command.pk).result_detail == "done"


def test_a_command_is_not_cancelled_while_a_worker_may_be_publishing_it(door: Device):
    alice = operator(door.tenant, "alice", password=None)
    on_the_wire = queued(door, attempted_at=timezone.now())
    failed_a_try = queued(door, retry_at=timezone.now() + timedelta(seconds=60))

    with pytest.raises(CommandStateError, match="being sent to the device right now"):
        cancel(on_the_wire, by=alice)
    assert cancel(failed_a_try, by=alice).data["status"] == "CANCELLED"
