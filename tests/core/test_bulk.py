"""core.bulk writes exactly what Django's own bulk_create / bulk_update would write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection

from apps.core.bulk import (
    column_adapter,
    fetch_instances,
    insert_rows,
    json_value,
    one_of,
    update_rows,
)
from apps.core.models import PendingBroadcast
from apps.devices.models import Device, TelemetryReading
from tests.factories import create_tenant_with_devices

pytestmark = pytest.mark.django_db

MOMENTS = [
    datetime(2026, 12, 1, 21, 5, 6, 318156, tzinfo=UTC),
    datetime(2026, 12, 1, 21, 5, 6, tzinfo=UTC),  # no fraction: str() leaves it out
    datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-11))),
]


def raw_row(model: type[TelemetryReading], key: str) -> tuple[Any, ...]:
    """The row as stored, column by column, not as the ORM reads it back."""
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tenant_id, device_id, recorded_at, received_at, battery, signal, "  # noqa: S608
            f"temperature, connectivity FROM {table} WHERE idempotency_key = %s",
            [key],
        )
        return tuple(cursor.fetchone())


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_every_column_adapter_gives_the_driver_what_django_gives_it(moment: datetime) -> None:
    fields = {f.name: f for f in TelemetryReading._meta.concrete_fields}
    values = {
        "recorded_at": moment,
        "battery": 12.5,
        "signal": None,
        "connectivity": "wifi",
        "idempotency_key": "k",
        "device": 7,
    }
    for name, value in values.items():
        field = fields[name]
        assert column_adapter(field, connection)(value) == field.get_db_prep_save(
            value, connection
        ), name


def test_inserted_rows_are_stored_exactly_as_bulk_create_stores_them() -> None:
    tenant = create_tenant_with_devices("acme", "sensor-001")
    device = Device.objects.get(device_id="sensor-001")
    for n, moment in enumerate(MOMENTS):
        common = {
            "tenant_id": tenant.pk,
            "recorded_at": moment,
            "received_at": moment + timedelta(seconds=1),
            "battery": 40.0 + n,
            "signal": None,
            "temperature": -3.25,
            "connectivity": "lte",
        }
        TelemetryReading.objects.bulk_create(
            [TelemetryReading(device=device, idempotency_key=f"django-{n}", **common)]
        )
        insert_rows(
            TelemetryReading, [{"device_id": device.pk, "idempotency_key": f"ours-{n}", **common}]
        )
        assert raw_row(TelemetryReading, f"ours-{n}") == raw_row(TelemetryReading, f"django-{n}")
        ours = TelemetryReading.objects.get(idempotency_key=f"ours-{n}")
        assert ours.recorded_at == moment
        assert ours.device_id == device.pk


def test_updated_rows_are_stored_exactly_as_bulk_update_stores_them() -> None:
    create_tenant_with_devices("acme", "sensor-001", "sensor-002")
    ours, theirs = Device.objects.order_by("device_id")
    for device in (ours, theirs):
        device.last_seen = MOMENTS[2]
        device.battery = 33.5
        device.status = Device.Status.LOW_BATTERY
    update_rows([ours], ["last_seen", "battery", "status"])
    Device.objects.bulk_update([theirs], ["last_seen", "battery", "status"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_seen, battery, status FROM devices_device ORDER BY device_id")
        first, second = cursor.fetchall()
    assert first == second
    ours.refresh_from_db()
    assert ours.last_seen == MOMENTS[2]


def test_a_batch_filter_finds_exactly_the_rows_a_list_finds() -> None:
    create_tenant_with_devices("acme", "sensor-001", "sensor-002", "sensor-003")
    wanted = {"sensor-001", "sensor-003", "not-registered", 'it\'s "quoted"'}
    found = Device.objects.filter(device_id__in=one_of(Device, wanted))
    assert sorted(found.values_list("device_id", flat=True)) == ["sensor-001", "sensor-003"]
    assert not Device.objects.filter(device_id__in=one_of(Device, set())).exists()


def test_fetched_instances_hold_what_the_orm_reads_and_load_other_fields_when_asked() -> None:
    create_tenant_with_devices("acme", "sensor-001", "sensor-002")
    Device.objects.filter(device_id="sensor-001").update(
        last_seen=MOMENTS[0], last_heartbeat=MOMENTS[2], battery=12.5, name="north gate"
    )
    fields = ("tenant_id", "device_id", "status", "last_seen", "last_heartbeat", "battery")
    ours = fetch_instances(Device.objects.order_by("pk"), fields)
    theirs = list(Device.objects.order_by("pk").only(*fields))
    assert [d.pk for d in ours] == [d.pk for d in theirs]
    for mine, django in zip(ours, theirs, strict=True):
        # repr: the same instant, and the same zone object (None where the column is NULL).
        assert [repr(getattr(mine, f)) for f in fields] == [
            repr(getattr(django, f)) for f in fields
        ]
        assert not mine._state.adding
        assert mine._state.db == django._state.db
        assert mine.get_deferred_fields() == django.get_deferred_fields()
    assert ours[0].last_seen == MOMENTS[0]
    assert ours[0].name == "north gate"  # not fetched: loaded on access, as a deferred field is
    ours[0].battery = 80.0
    ours[0].save(update_fields=["battery"])
    assert Device.objects.get(pk=ours[0].pk).battery == 80.0


def test_fetching_none_of_an_empty_list_runs_no_query_and_returns_nothing() -> None:
    create_tenant_with_devices("acme", "sensor-001")
    assert fetch_instances(Device.objects.filter(device_id__in=[]), ("device_id",)) == []


def test_a_json_value_is_stored_as_django_would_store_it_and_reads_back_the_same() -> None:
    value = [
        {"tenant_id": 7, "message_type": "telemetry_update", "data": {"site": "Zürich Nord 北門"}},
        {"nested": [1, 2.5, None, True, 'quote " and \\ backslash'], "empty": {}},
    ]
    ours = PendingBroadcast.objects.create(events=json_value(PendingBroadcast, value))
    theirs = PendingBroadcast.objects.create(events=value)
    assert PendingBroadcast.objects.get(pk=ours.pk).events == value
    assert PendingBroadcast.objects.filter(events__0__data__site="Zürich Nord 北門").count() == 2
    assert PendingBroadcast.objects.get(pk=theirs.pk).events == value
