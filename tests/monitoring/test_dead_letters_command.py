"""`manage.py dead_letters` and `manage.py register_device` against the real bus."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.core.envelope import Envelope
from apps.core.models import DeadLetter, ProcessedMessage
from apps.core.tasks.base import PROCESSING_FAILED
from apps.devices.models import Device, TelemetryReading
from apps.tenants.models import Tenant
from tests import environment
from tests.factories import telemetry
from tests.services import Service, metric, mqtt_publish, wait_for


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_an_unknown_device_message_is_replayed_once_the_device_is_registered(bus: Service):
    Tenant.objects.create(name="acme")
    mqtt_publish(environment.MQTT_PORT, [("device/late-1/telemetry", telemetry(battery=64))])
    letter = wait_for(
        lambda: DeadLetter.objects.filter(reason="unknown_device").first(), timeout=20
    )

    listing = run("dead_letters", "list")
    assert "unknown_device 1" in listing
    assert "device/late-1/telemetry" in listing
    assert '"battery": 64' in run("dead_letters", "show", str(letter.pk))

    assert "Registered late-1" in run(
        "register_device", "--tenant", "acme", "--id", "late-1", "--kind", "sensor"
    )
    assert "Replayed 1, still rejected 0." in run("dead_letters", "replay", str(letter.pk))
    wait_for(lambda: TelemetryReading.objects.filter(battery=64).exists(), timeout=20)
    assert Device.objects.get(device_id="late-1").tenant.name == "acme"

    # A replayed letter is not replayed twice.
    assert "Replayed 0, still rejected 0." in run("dead_letters", "replay", "--all")
    assert "Purged 1 dead letters." in run("dead_letters", "purge", "--all")


def test_replaying_a_failed_copy_of_a_message_already_applied_adds_nothing(bus: Service):
    """Copies of one message can travel in several tasks (a redelivery, a split batch): one
    applied, another dead-lettered when its batch failed. Replaying that letter must find the
    applied copy's claim and count a duplicate, not store the reading a second time."""
    Tenant.objects.create(name="acme")
    call_command("register_device", "--tenant", "acme", "--id", "twice-1", "--kind", "sensor")
    mqtt_publish(environment.MQTT_PORT, [("device/twice-1/telemetry", telemetry(msg_id="t-1"))])
    reading = wait_for(lambda: TelemetryReading.objects.first(), timeout=20, what="the reading")
    claim = ProcessedMessage.objects.get(key=reading.idempotency_key)
    topic = "device/twice-1/telemetry"
    copy = Envelope(claim.key, topic, "twice-1", "telemetry", json.loads(telemetry()), 0.0)
    letter = DeadLetter.objects.create(
        stage=DeadLetter.Stage.PROCESSING,
        reason=PROCESSING_FAILED,
        detail="OperationalError: database is locked",
        topic=topic,
        payload=b"{}",
        payload_size=2,
        envelope=copy.to_message(),
        received_at=timezone.now(),
    )
    duplicates = metric("bus_messages_duplicate_total", kind="telemetry")

    assert "Replayed 1, still rejected 0." in run("dead_letters", "replay", str(letter.pk))
    wait_for(
        lambda: metric("bus_messages_duplicate_total", kind="telemetry") > duplicates,
        timeout=20,
        what="the replayed copy counted as a duplicate",
    )
    assert TelemetryReading.objects.count() == 1
    assert ProcessedMessage.objects.filter(key=claim.key).exists()


def test_a_replay_that_still_fails_says_why(bus: Service):
    mqtt_publish(environment.MQTT_PORT, [("device/ghost/telemetry", telemetry())])
    wait_for(lambda: DeadLetter.objects.exists(), timeout=20)
    output = run("dead_letters", "replay", "--reason", "unknown_device")
    assert "still rejected — unknown_device" in output
    assert DeadLetter.objects.get().replayed_at is None


@pytest.mark.django_db
def test_purge_refuses_to_guess_what_to_delete():
    with pytest.raises(CommandError, match="--older-than DAYS or --all"):
        call_command("dead_letters", "purge")


@pytest.mark.django_db
def test_registering_for_a_missing_tenant_names_the_fix():
    with pytest.raises(CommandError, match="no tenant named 'nope'"):
        call_command("register_device", "--tenant", "nope", "--id", "x", "--kind", "sensor")
