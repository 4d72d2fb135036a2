"""Offline detection judges silence by what was received, while intake listened throughout, and
by each device's expected reporting interval (its own, else its kind's)."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.alerts.models import Alert
from apps.core import intake_status
from apps.core.envelope import Envelope
from apps.core.redis_client import state_redis
from apps.devices.models import Device
from apps.mqtt.intake import Intake
from apps.mqtt.presence import detect_offline_devices
from apps.mqtt.tasks import PROCESSING_TASKS
from tests.factories import create_tenant_with_devices, gps, telemetry

pytestmark = pytest.mark.django_db


@pytest.fixture
def silent_in_the_database(redis_client: object) -> Device:
    """A device whose last processed message is an hour old."""
    create_tenant_with_devices("acme", "sensor-001")
    Device.objects.filter(device_id="sensor-001").update(
        last_seen=timezone.now() - timedelta(hours=1), status=Device.Status.ONLINE
    )
    return Device.objects.get(device_id="sensor-001")


def listening(since_seconds_ago: float) -> None:
    intake_status.write_status(
        state_redis(),
        "subscriber-1",
        connected=True,
        last_message_at=time.time(),
        connected_since=time.time() - since_seconds_ago,
    )


def test_a_device_whose_messages_wait_in_a_queue_is_not_offline(silent_in_the_database):
    # A backlog drains: the subscriber received its message a moment ago, the workers have
    # not stored it yet.
    listening(since_seconds_ago=3600)
    intake_status.record_received(state_redis(), {"sensor-001": time.time() - 1})
    assert detect_offline_devices() == 0
    assert Device.objects.get(device_id="sensor-001").status == Device.Status.ONLINE
    assert not Alert.objects.exists()


def test_a_device_silent_while_intake_listened_goes_offline(silent_in_the_database):
    listening(since_seconds_ago=3600)
    intake_status.record_received(state_redis(), {"sensor-001": time.time() - 3600})
    assert detect_offline_devices() == 1
    assert Device.objects.get(device_id="sensor-001").status == Device.Status.OFFLINE
    assert Alert.objects.get().alert_type == "OFFLINE"


def test_after_a_reconnect_detection_waits_a_whole_period(silent_in_the_database):
    # Just back from an outage: the broker may still hold what the device sent meanwhile.
    listening(since_seconds_ago=2)
    assert detect_offline_devices() == 0
    assert Device.objects.get(device_id="sensor-001").status == Device.Status.ONLINE


def silent_for(seconds: float, *device_ids: str, **fields: object) -> None:
    Device.objects.filter(device_id__in=device_ids).update(
        last_seen=timezone.now() - timedelta(seconds=seconds), status=Device.Status.ONLINE, **fields
    )


def statuses() -> dict[str, str]:
    return dict(Device.objects.values_list("device_id", "status"))


def test_an_event_only_device_goes_offline_only_once_it_has_sent_a_heartbeat(redis_client):
    # A panic button is silent until pressed: an hour of silence after one press is normal.
    create_tenant_with_devices("acme", "panic-1", "panic-2", "guard-1", "sensor-1")
    silent_for(3600, "panic-1", "guard-1", "sensor-1")
    silent_for(3600, "panic-2", last_heartbeat=timezone.now() - timedelta(hours=2))
    listening(since_seconds_ago=7200)
    assert detect_offline_devices() == 2
    assert statuses() == {
        "panic-1": Device.Status.ONLINE,
        "guard-1": Device.Status.ONLINE,
        "panic-2": Device.Status.OFFLINE,  # it sends heartbeats: its silence means something
        "sensor-1": Device.Status.OFFLINE,  # a sensor reports regularly from its first message
    }
    assert sorted(Alert.objects.values_list("source_id", flat=True)) == ["panic-2", "sensor-1"]


def test_a_devices_own_interval_wins_over_its_kinds(redis_client):
    create_tenant_with_devices("acme", "sensor-usual", "panic-watched")
    call_command(
        "register_device", "--tenant=acme", "--id=sensor-slow", "--kind=sensor",
        "--report-interval=7200", stdout=StringIO(),
    )  # fmt: skip
    silent_for(3600, "sensor-usual", "sensor-slow")
    # Given an interval, even a device of an event-only kind is expected to report.
    silent_for(3600, "panic-watched", report_interval=timedelta(minutes=30))
    listening(since_seconds_ago=3 * 3600)
    assert detect_offline_devices() == 2
    assert statuses() == {
        "sensor-slow": Device.Status.ONLINE,
        "sensor-usual": Device.Status.OFFLINE,
        "panic-watched": Device.Status.OFFLINE,
    }


def test_telemetry_is_a_heartbeat_and_a_gps_position_is_not(redis_client):
    create_tenant_with_devices("acme", "guard-1")
    intake = Intake()
    for topic, body, kind in [
        ("guard/guard-1/gps", gps(), "gps"),
        ("device/guard-1/telemetry", telemetry(), "telemetry"),
    ]:
        envelope = intake.check(topic, body.encode())
        assert isinstance(envelope, Envelope), envelope
        PROCESSING_TASKS[kind].apply(args=[[envelope.to_message()]]).get()
        device = Device.objects.get(device_id="guard-1")
        assert device.last_seen is not None
        assert (device.last_heartbeat is not None) == (kind == "telemetry")
