"""A batch's rules run over the whole batch: the right alerts, in queries that do not grow with
the number of devices (the consumer's handler, in the batch runner's transaction)."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, Self

import msgspec
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from pydantic import ValidationError, model_validator

from apps.alerts.models import Alert, AlertStatus
from apps.core.envelope import Envelope
from apps.core.tasks.base import Outcome, _process
from apps.core.tasks.celery_settings import PROCESS_DEVICE_TELEMETRY, TASK_QUEUES
from apps.devices.messages import TelemetryPayload
from apps.devices.models import Device, TelemetryReading
from apps.mqtt.consumers import telemetry as telemetry_consumer
from apps.mqtt.consumers.base import with_devices
from apps.mqtt.intake import Intake
from tests.factories import create_tenant_with_devices, now_iso, telemetry

pytestmark = pytest.mark.django_db

handle = with_devices(telemetry_consumer.process, schema=TelemetryPayload)
_sent = Counter[str]()


def send(batteries: dict[str, float]) -> list[Envelope]:
    """One telemetry message from each device with its battery, through intake."""
    intake = Intake()
    envelopes = []
    for device_id, battery in batteries.items():
        _sent[device_id] += 1
        body = telemetry(battery=battery, msg_id=f"b{_sent[device_id]}", timestamp=now_iso())
        outcome = intake.check(f"device/{device_id}/telemetry", body.encode())
        assert isinstance(outcome, Envelope), outcome
        envelopes.append(outcome)
    return envelopes


def run(envelopes: list[Envelope]) -> Outcome:
    apply = handle(envelopes)  # validates, before the transaction as the batch runner calls it
    with transaction.atomic():
        return apply(envelopes)


def fleet(per_tenant: int) -> dict[str, list[str]]:
    """Devices over three tenants, split in the four groups the second batch tells apart."""
    groups: dict[str, list[str]] = {"stay_low": [], "recover": [], "go_low": [], "stay_ok": []}
    for t in range(3):
        ids = [f"bat-{per_tenant}-{t}-{i}" for i in range(per_tenant)]
        create_tenant_with_devices(f"batch-{per_tenant}-{t}", *ids)
        for i, device_id in enumerate(ids):
            groups[list(groups)[i % 4]].append(device_id)
    return groups


def first_and_second_batch(groups: dict[str, list[str]]) -> tuple[Outcome, int]:
    """Batch 1: the first two groups go low. Batch 2 (measured): each group does its name."""
    low_first = groups["stay_low"] + groups["recover"]
    run(send({d: 10 if d in low_first else 80 for ids in groups.values() for d in ids}))
    second = {
        **dict.fromkeys(groups["stay_low"], 5.0),
        **dict.fromkeys(groups["recover"], 90.0),
        **dict.fromkeys(groups["go_low"], 12.0),
        **dict.fromkeys(groups["stay_ok"], 70.0),
    }
    envelopes = send(second)
    with CaptureQueriesContext(connection) as queries:
        outcome = run(envelopes)
    savepoints = ("SAVEPOINT", "RELEASE SAVEPOINT")
    return outcome, sum(not q["sql"].startswith(savepoints) for q in queries.captured_queries)


def test_a_batch_from_many_devices_raises_repeats_and_clears_exactly_the_right_alerts():
    groups = fleet(per_tenant=8)
    outcome, _ = first_and_second_batch(groups)

    def alerts(status: str) -> dict[str, int]:
        return dict(
            Alert.objects.filter(alert_type="LOW_BATTERY", status=status).values_list(
                "source_id", "count"
            )
        )

    assert alerts(AlertStatus.NEW) == {
        **dict.fromkeys(groups["stay_low"], 2),
        **dict.fromkeys(groups["go_low"], 1),
    }
    assert alerts(AlertStatus.RESOLVED) == dict.fromkeys(groups["recover"], 1)
    for alert in Alert.objects.select_related("device"):
        assert alert.tenant_id == alert.device.tenant_id
    resolved = Alert.objects.filter(status=AlertStatus.RESOLVED)
    assert all(a.transitions.get().to_status == AlertStatus.RESOLVED for a in resolved)

    statuses = dict(Device.objects.values_list("device_id", "status"))
    low = set(groups["stay_low"] + groups["go_low"])
    assert {d for d, s in statuses.items() if s == Device.Status.LOW_BATTERY} == low
    assert {d for d, s in statuses.items() if s == Device.Status.ONLINE} == set(statuses) - low

    alert_updates = Counter(
        e.data["source_id"] for e in outcome.events if e.message_type.value == "alert_updated"
    )
    changed = groups["stay_low"] + groups["recover"] + groups["go_low"]
    assert alert_updates == Counter(changed)
    status_updates = [e for e in outcome.events if e.message_type.value == "device_status"]
    assert len(status_updates) == 3  # one per tenant
    assert sorted(
        (d["device_id"], d["status"]) for e in status_updates for d in e.data["devices"]
    ) == sorted(
        [(d, Device.Status.ONLINE) for d in groups["recover"]]
        + [(d, Device.Status.LOW_BATTERY) for d in groups["go_low"]]
    )
    per_tenant = [e for e in outcome.events if e.message_type.value == "telemetry_update"]
    assert len(per_tenant) == 3
    assert sum(e.data["messages"] for e in per_tenant) == sum(len(g) for g in groups.values())


def test_the_queries_of_a_batch_do_not_grow_with_its_devices():
    _, few = first_and_second_batch(fleet(per_tenant=4))
    _, many = first_and_second_batch(fleet(per_tenant=32))
    assert few == many, f"{few} queries for 12 devices, {many} for 96"
    # Lock the devices, insert the readings, write the devices; find the active alerts once
    # for raising and clearing; for each: insert (alerts, transitions), update them.
    assert many == 8


def device_update(envelopes: list[Envelope]) -> str:
    """The statement that wrote the batch's devices."""
    with CaptureQueriesContext(connection) as queries:
        run(envelopes)
    table = Device._meta.db_table
    (update,) = [q["sql"] for q in queries.captured_queries if f'UPDATE "{table}"' in q["sql"]]
    return update.partition(" SET ")[2].partition(" WHERE ")[0]


def test_a_batch_writes_only_the_device_fields_that_changed():
    create_tenant_with_devices("acme", "sensor-1", "sensor-2")
    # First heard from: status (unknown -> online), last_seen, battery and signal change.
    first = device_update(send({"sensor-1": 80.0, "sensor-2": 80.0}))
    assert [c.split(" = ")[0] for c in first.split(", ")] == [
        '"status"',
        '"last_seen"',
        '"battery"',
        '"signal"',
    ]
    # Same readings again: only the time they were heard.
    assert device_update(send({"sensor-1": 80.0, "sensor-2": 80.0})) == '"last_seen" = %s'
    # One battery moves: its column too, and only for what changed on any device.
    seen = dict(Device.objects.values_list("device_id", "last_seen"))
    assert device_update(send({"sensor-1": 80.0, "sensor-2": 60.0})) == (
        '"last_seen" = %s, "battery" = %s'
    )
    devices = {d.device_id: d for d in Device.objects.all()}
    assert devices["sensor-1"].battery == 80.0
    assert devices["sensor-2"].battery == 60.0
    assert all(devices[d].last_seen > seen[d] for d in devices)
    assert {d.status for d in devices.values()} == {Device.Status.ONLINE}


def test_a_fleets_first_batch_announces_its_devices_online_in_one_event_per_tenant():
    groups = fleet(per_tenant=40)
    devices = [d for group in groups.values() for d in group]
    outcome = run(send(dict.fromkeys(devices, 80.0)))

    status_updates = [e for e in outcome.events if e.message_type.value == "device_status"]
    assert len(status_updates) == 3
    tenants = dict(Device.objects.values_list("device_id", "tenant_id"))
    for event in status_updates:
        assert {tenants[d["device_id"]] for d in event.data["devices"]} == {event.tenant_id}
        assert {d["status"] for d in event.data["devices"]} == {Device.Status.ONLINE}
    announced = [d["device_id"] for e in status_updates for d in e.data["devices"]]
    assert sorted(announced) == sorted(devices)

    # Heard again, nothing changes status: nothing is announced.
    outcome = run(send(dict.fromkeys(devices, 80.0)))
    assert not [e for e in outcome.events if e.message_type.value == "device_status"]


class _RecordingPayload(TelemetryPayload):
    """A telemetry payload that notes whether a transaction was open when it was validated."""

    in_transaction: ClassVar[list[bool]] = []

    @model_validator(mode="after")
    def _note(self) -> Self:
        self.in_transaction.append(connection.in_atomic_block)
        return self


@pytest.mark.django_db(transaction=True)
def test_the_batch_runner_validates_payloads_before_its_transaction_and_applies_them_in_it():
    # The writer is held for the transaction only: the validation of each payload is done
    # before it opens (the critical worker and the other general process wait for the writer).
    create_tenant_with_devices("acme", "sensor-1", "sensor-2")
    recorded = with_devices(telemetry_consumer.process, schema=_RecordingPayload)
    _RecordingPayload.in_transaction.clear()
    envelopes = send({"sensor-1": 55.0, "sensor-2": 65.0})

    result = _process(TASK_QUEUES[PROCESS_DEVICE_TELEMETRY], "telemetry", recorded, envelopes, [])

    assert result == {"processed": 2, "duplicates": 0, "dead": 0}
    assert _RecordingPayload.in_transaction == [False, False]
    assert dict(TelemetryReading.objects.values_list("device__device_id", "battery")) == {
        "sensor-1": 55.0,
        "sensor-2": 65.0,
    }


@pytest.mark.django_db(transaction=True)
def test_a_payload_that_no_longer_validates_fails_its_batch_only_if_it_is_to_be_applied():
    create_tenant_with_devices("acme", "sensor-1", "sensor-2")
    queue = TASK_QUEUES[PROCESS_DEVICE_TELEMETRY]
    (applied,) = send({"sensor-1": 50.0})
    assert _process(queue, "telemetry", handle, [applied], [])["processed"] == 1

    # Its copy, redelivered with a payload this release cannot read (no timestamp), is a
    # duplicate: skipped, as before payloads were validated ahead of the transaction.
    unreadable_copy = msgspec.structs.replace(applied, payload={"battery": 40})
    (fresh,) = send({"sensor-2": 70.0})
    result = _process(queue, "telemetry", handle, [unreadable_copy, fresh], [])
    assert result == {"processed": 1, "duplicates": 1, "dead": 0}

    # A fresh message whose payload cannot be read fails its batch, which is retried, then
    # split, and the message dead-lettered (tests/mqtt/test_delivery.py, the poison message).
    (later,) = send({"sensor-1": 45.0})
    unreadable = msgspec.structs.replace(later, payload={"battery": 45})
    with pytest.raises(ValidationError, match="timestamp"):
        _process(queue, "telemetry", handle, [unreadable], [])
    assert sorted(TelemetryReading.objects.values_list("battery", flat=True)) == [50.0, 70.0]


def test_a_soft_time_limit_while_validating_is_raised_at_once_not_kept_as_the_payloads():
    class _TimedOut(TelemetryPayload):
        @model_validator(mode="after")
        def _limit(self) -> Self:
            raise SoftTimeLimitExceeded()

    create_tenant_with_devices("acme", "sensor-1")
    envelopes = send({"sensor-1": 50.0})
    with pytest.raises(SoftTimeLimitExceeded):
        with_devices(telemetry_consumer.process, schema=_TimedOut)(envelopes)
