"""Retention: the beat jobs forget what is older than its setting, and nothing else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.alerts.models import Alert, AlertStatus
from apps.alerts.services import AlertSignal, raise_alert, transition
from apps.core.models import DeadLetter
from apps.core.retention import CHUNK_ROWS, delete_before
from apps.core.tasks import celery_settings
from apps.devices.models import Device, SensorReading, TelemetryReading
from intelliwiz_config.celery import app
from tests.factories import create_tenant_with_devices
from tests.services import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
NOW = datetime.now(tz=UTC)


def reading(model, device: Device, days_ago: float) -> int:
    at = NOW - timedelta(days=days_ago)
    row = model._default_manager.create(
        tenant_id=device.tenant_id,
        device=device,
        idempotency_key=uuid.uuid4().hex,
        recorded_at=NOW,  # a device clock may say anything: age is by receipt
        received_at=at,
    )
    return int(row.pk)


def alert(device: Device, alert_type: str, *, closed_days_ago: float | None) -> int:
    signal = AlertSignal(device, alert_type, "HIGH", seen_at=NOW - timedelta(days=400))
    created = Alert.objects.get(pk=raise_alert(signal).data["id"])
    if closed_days_ago is not None:
        transition(created, AlertStatus.RESOLVED, by=None, note="done")
        Alert.objects.filter(pk=created.pk).update(
            resolved_at=NOW - timedelta(days=closed_days_ago)
        )
    return int(created.pk)


def refresh_token(hours_left: float, *, blacklisted: bool = False) -> int:
    row = OutstandingToken.objects.create(
        jti=uuid.uuid4().hex, token="t", expires_at=NOW + timedelta(hours=hours_left)
    )
    if blacklisted:
        BlacklistedToken.objects.create(token=row)
    return int(row.pk)


def test_old_readings_dead_letters_closed_alerts_and_expired_tokens_are_forgotten_and_no_more(
    all_queue_workers, redis_client
):
    tenant = create_tenant_with_devices("acme", "sensor-001")
    device = Device.objects.get(device_id="sensor-001", tenant=tenant)

    # More old rows than one chunk, so the job has to go round.
    old_telemetry = [reading(TelemetryReading, device, 91) for _ in range(CHUNK_ROWS + 5)]
    kept_telemetry = reading(TelemetryReading, device, 89)
    old_sensor, kept_sensor = reading(SensorReading, device, 120), reading(SensorReading, device, 1)

    def letter(days_ago: float) -> int:
        row = DeadLetter.objects.create(
            stage="intake", reason="json", topic="t", payload=b"x", payload_size=1,
            received_at=NOW,
        )  # fmt: skip
        DeadLetter.objects.filter(pk=row.pk).update(created_at=NOW - timedelta(days=days_ago))
        return int(row.pk)

    old_letter, kept_letter = letter(31), letter(29)
    old_closed = alert(device, "LOW_BATTERY", closed_days_ago=366)
    recent_closed = alert(device, "SYSTEM_HEALTH", closed_days_ago=364)
    old_but_active = alert(device, "OFFLINE", closed_days_ago=None)
    expired_tokens = [refresh_token(-1), refresh_token(-1, blacklisted=True)]
    kept_tokens = {refresh_token(1), refresh_token(1, blacklisted=True)}

    for task in (
        celery_settings.PRUNE_READINGS,
        celery_settings.PRUNE_DEAD_LETTERS,
        celery_settings.PRUNE_CLOSED_ALERTS,
        celery_settings.PRUNE_EXPIRED_TOKENS,
    ):
        app.send_task(task)

    wait_for(
        lambda: (
            not TelemetryReading.objects.filter(pk__in=old_telemetry).exists()
            and not SensorReading.objects.filter(pk=old_sensor).exists()
            and not DeadLetter.objects.filter(pk=old_letter).exists()
            and not Alert.objects.filter(pk=old_closed).exists()
            and not OutstandingToken.objects.filter(pk__in=expired_tokens).exists()
        ),
        timeout=60,
        what="the old rows to be pruned",
    )
    assert set(TelemetryReading.objects.values_list("pk", flat=True)) == {kept_telemetry}
    assert set(SensorReading.objects.values_list("pk", flat=True)) == {kept_sensor}
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == {kept_letter}
    assert set(Alert.objects.values_list("pk", flat=True)) == {recent_closed, old_but_active}
    assert set(OutstandingToken.objects.values_list("pk", flat=True)) == kept_tokens
    assert BlacklistedToken.objects.count() == 1


def test_every_retention_job_is_on_the_beat_schedule():
    scheduled = {entry["task"] for entry in celery_settings.BEAT_SCHEDULE.values()}
    assert {
        celery_settings.PRUNE_PROCESSED_MESSAGES,
        celery_settings.PRUNE_READINGS,
        celery_settings.PRUNE_DEAD_LETTERS,
        celery_settings.PRUNE_CLOSED_ALERTS,
        celery_settings.PRUNE_EXPIRED_TOKENS,
    } <= scheduled


def test_a_prune_with_nothing_due_reads_only_the_oldest_row_by_its_primary_key():
    """Most hourly runs find nothing to prune; without an index on the time field, finding so
    read the whole table. A time that grows with the primary key answers from the oldest row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    tenant = create_tenant_with_devices("acme", "sensor-001")
    device = Device.objects.get(device_id="sensor-001", tenant=tenant)
    kept = [reading(TelemetryReading, device, days) for days in (10, 5, 1)]
    cutoff = NOW - timedelta(days=30)
    with CaptureQueriesContext(connection) as queries:
        assert delete_before(TelemetryReading, "received_at", cutoff, follows_pk=True) == 0
    assert len(queries) == 1
    assert "LIMIT 1" in queries[0]["sql"]
    old = reading(TelemetryReading, device, 40)  # a later key with an older time: left alone
    assert delete_before(TelemetryReading, "received_at", cutoff, follows_pk=True) == 0
    assert delete_before(TelemetryReading, "received_at", cutoff) == 1
    assert sorted(TelemetryReading.objects.values_list("pk", flat=True)) == kept
    assert old not in kept
