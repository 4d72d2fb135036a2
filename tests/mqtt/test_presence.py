"""Offline detection judges silence by what was received, while intake listened throughout."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.alerts.models import Alert
from apps.core import intake_status
from apps.core.redis_client import state_redis
from apps.devices.models import Device
from apps.mqtt.presence import detect_offline_devices
from tests.factories import create_tenant_with_devices

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
