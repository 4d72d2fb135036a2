"""MQTT in, rows and alerts out: real Mosquitto, subscriber, Redis and Celery workers."""

from __future__ import annotations

import pytest

from apps.alerts.models import Alert
from apps.core.models import DeadLetter, ProcessedMessage
from apps.devices.models import (
    Device,
    Geofence,
    GuardLocation,
    SensorReading,
    SystemHealthSample,
    TelemetryReading,
)
from tests import environment
from tests.factories import create_tenant_with_devices, gps, now_iso, panic, payload, telemetry
from tests.services import Service, metric, mqtt_publish, wait_for

PORT = environment.MQTT_PORT


@pytest.fixture
def site(bus: Service):
    tenant = create_tenant_with_devices(
        "acme", "sensor-001", "smoke-301", "door-7", "panic-007", "gateway-01"
    )
    create_tenant_with_devices("acme-guards-x", kind="gps_tracker")
    from apps.devices.services import register_device

    register_device(tenant, "guard-123", "gps_tracker")
    return tenant


def test_each_kind_published_over_mqtt_produces_its_rows_and_alerts(site):
    Geofence.objects.create(
        tenant=site, name="HQ", shape="circle", center_lat=12.9716, center_lon=77.5946, radius_m=200
    )
    mqtt_publish(
        PORT,
        [
            ("device/sensor-001/telemetry", telemetry(battery=15, connectivity="online")),
            ("guard/guard-123/gps", gps(guard_id="guard-123")),
            ("guard/guard-123/gps", gps(lat=13.5, lon=77.0, timestamp=now_iso(1))),
            ("sensor/smoke-301/status", payload(type="smoke", value=150, state="ALARM")),
            ("sensor/door-7/status", payload(type="door", state="forced")),
            ("alert/panic-007/panic", panic()),
            ("system/gateway-01/health", payload(cpu=95.0, memory=63.5, disk=71.0, uptime=86400)),
        ],
    )
    expected = {
        ("LOW_BATTERY", "sensor-001", "MEDIUM"),
        ("GEOFENCE_VIOLATION", "guard-123", "HIGH"),
        ("FIRE", "smoke-301", "CRITICAL"),
        ("INTRUSION", "door-7", "CRITICAL"),
        ("PANIC", "panic-007", "CRITICAL"),
        ("SYSTEM_HEALTH", "gateway-01", "HIGH"),
    }

    def alerts() -> set[tuple[str, str, str]]:
        return set(Alert.objects.values_list("alert_type", "source_id", "severity"))

    wait_for(lambda: alerts() == expected, timeout=30, what=f"alerts {expected}")
    assert TelemetryReading.objects.get().battery == 15
    assert TelemetryReading.objects.get().connectivity == "ONLINE"
    assert list(
        GuardLocation.objects.order_by("recorded_at").values_list("inside_geofence", flat=True)
    ) == [True, False]
    assert SensorReading.objects.count() == 2
    assert SystemHealthSample.objects.get().cpu == 95.0
    assert Device.objects.get(device_id="sensor-001").status == Device.Status.LOW_BATTERY
    assert all(alert.tenant_id == site.id for alert in Alert.objects.all())
    assert not DeadLetter.objects.exists()


def test_battery_recovery_clears_low_battery(site):
    mqtt_publish(PORT, [("device/sensor-001/telemetry", telemetry(battery=12))])
    wait_for(
        lambda: Alert.objects.filter(alert_type="LOW_BATTERY", status="NEW").exists(), timeout=20
    )
    mqtt_publish(
        PORT, [("device/sensor-001/telemetry", telemetry(battery=80, timestamp=now_iso(1)))]
    )
    wait_for(
        lambda: Alert.objects.filter(alert_type="LOW_BATTERY", status="RESOLVED").exists(),
        timeout=20,
        what="LOW_BATTERY to be resolved",
    )
    device = Device.objects.get(device_id="sensor-001")
    assert device.status == Device.Status.ONLINE
    assert device.battery == 80
    transition = Alert.objects.get().transitions.get()
    assert (transition.from_status, transition.to_status, transition.by) == (
        "NEW",
        "RESOLVED",
        None,
    )


def test_a_repeated_alert_raises_the_count_of_the_active_one(site):
    mqtt_publish(PORT, [("alert/panic-007/panic", panic(msg_id=f"p{i}")) for i in range(3)])
    wait_for(lambda: Alert.objects.filter(count=3).exists(), timeout=20, what="count 3")
    assert Alert.objects.count() == 1


BAD_MESSAGES = [
    ("device/sensor-001", telemetry(), "topic"),
    ("device/sensor-001/telemetry", '{"battery": 1, "pad": "' + "x" * (1024 * 1024) + '"}', "size"),
    ("device/sensor-001/telemetry", b"\xff\xfe{}", "encoding"),
    ("device/sensor-001/telemetry", "{not json", "json"),
    ("device/sensor-001/telemetry", "[1, 2, 3]", "not_object"),
    ("device/sensor-001/telemetry", telemetry(battery=140), "schema"),
    ("device/sensor-001/telemetry", telemetry(device_id="sensor-999"), "id_mismatch"),
    ("device/stranger-1/telemetry", telemetry(), "unknown_device"),
    ("device/sensor-001/telemetry", telemetry(timestamp=now_iso(3600)), "future_timestamp"),
    ("device/sensor-001/telemetry", telemetry(timestamp=now_iso(-8 * 86400)), "stale_timestamp"),
    ("device/sensor-001/telemetry", telemetry(battery=float("nan")), "non_finite_number"),
    ("device/sensor-001/telemetry", telemetry(connectivity="4G\u0000"), "nul_character"),
    ("system/gateway-01/health", payload(uptime=2**64), "number_out_of_range"),
]


def test_every_rejection_is_dead_lettered_with_its_reason_and_the_loop_carries_on(site, bus):
    reasons = [reason for _, _, reason in BAD_MESSAGES]
    rejected_before = {r: metric("mqtt_messages_rejected_total", reason=r) for r in reasons}
    lettered_before = {r: metric("dead_letters_total", stage="intake", reason=r) for r in reasons}
    mqtt_publish(PORT, [(topic, body) for topic, body, _ in BAD_MESSAGES])
    mqtt_publish(PORT, [("device/sensor-001/telemetry", telemetry(battery=77))])

    expected = sorted(reason for _, _, reason in BAD_MESSAGES)
    wait_for(
        lambda: sorted(DeadLetter.objects.values_list("reason", flat=True)) == expected,
        timeout=30,
        what=f"dead letters {expected}",
    )
    wait_for(lambda: TelemetryReading.objects.filter(battery=77).exists(), timeout=20)
    assert bus.alive()
    oversize = DeadLetter.objects.get(reason="size")
    assert oversize.payload_size > 1024 * 1024
    assert len(bytes(oversize.payload)) == DeadLetter.PAYLOAD_KEEP_BYTES
    assert "MQTT message rejected" in bus.log()
    assert "reason=schema" in bus.log()
    assert DeadLetter.objects.get(reason="schema").detail.startswith("battery:")
    assert ProcessedMessage.objects.count() == 1
    for reason in reasons:
        counted = metric("mqtt_messages_rejected_total", reason=reason) - rejected_before[reason]
        assert counted == 1, f"{reason} counted {counted} times"
        lettered = metric("dead_letters_total", stage="intake", reason=reason)
        lettered -= lettered_before[reason]
        assert lettered == 1, f"{reason} dead-lettered {lettered} times"


def test_lower_case_severity_and_alert_type_are_accepted(site):
    mqtt_publish(PORT, [("alert/panic-007/sos", panic(alert_type="sos", severity="high"))])
    wait_for(lambda: Alert.objects.filter(alert_type="SOS", severity="HIGH").exists(), timeout=20)


@pytest.mark.parametrize(
    "task_name",
    [
        "apps.mqtt.presence.detect_offline_devices",
        # Its name before it moved: such messages may still be queued after an upgrade.
        "apps.devices.tasks.detect_offline_devices",
    ],
)
def test_a_silent_device_goes_offline_and_its_next_message_brings_it_back(site, task_name):
    from datetime import timedelta

    from django.utils import timezone

    from apps.core.tasks.celery_settings import DETECT_OFFLINE_DEVICES, RENAMED_TASKS
    from intelliwiz_config.celery import app

    assert RENAMED_TASKS.get(task_name, task_name) == DETECT_OFFLINE_DEVICES
    Device.objects.filter(device_id="sensor-001").update(
        last_seen=timezone.now() - timedelta(hours=1)
    )
    listened_a_period()
    app.send_task(task_name)
    wait_for(
        lambda: Device.objects.get(device_id="sensor-001").status == Device.Status.OFFLINE,
        timeout=20,
        what="the device to go offline",
    )
    offline = Alert.objects.get(alert_type="OFFLINE", source_id="sensor-001")
    assert offline.status == "NEW"
    assert Device.objects.get(device_id="smoke-301").status == Device.Status.UNKNOWN

    mqtt_publish(PORT, [("device/sensor-001/telemetry", telemetry(battery=90))])
    wait_for(
        lambda: Device.objects.get(device_id="sensor-001").status == Device.Status.ONLINE,
        timeout=20,
        what="the device to come back",
    )
    offline.refresh_from_db()
    assert offline.status == "RESOLVED"


def listened_a_period() -> None:
    """Offline detection judges only after intake has listened DEVICE_OFFLINE_AFTER seconds."""
    import time

    from django.conf import settings

    from apps.core.intake_status import read_statuses
    from apps.core.redis_client import state_redis

    def listened() -> bool:
        since = [s.connected_since for s in read_statuses(state_redis()) if s.connected]
        return bool(since) and time.time() - max(s or time.time() for s in since) > (
            settings.DEVICE_OFFLINE_AFTER + 1
        )

    wait_for(listened, timeout=settings.DEVICE_OFFLINE_AFTER + 30, what="a whole period")


def test_the_subscriber_notes_when_each_device_was_last_heard(site):
    from apps.core.intake_status import last_received
    from apps.core.redis_client import state_redis

    mqtt_publish(PORT, [("device/sensor-001/telemetry", telemetry(battery=61))])
    heard = wait_for(
        lambda: last_received(state_redis(), ["sensor-001", "smoke-301"]),
        timeout=20,
        what="the subscriber to note when sensor-001 was heard",
    )
    assert set(heard) == {"sensor-001"}
    # Noted at receipt, before the worker stores it: let it finish, or its effects would land
    # in the next test's database (seen: one ProcessedMessage too many there).
    wait_for(
        lambda: TelemetryReading.objects.filter(battery=61).exists(), timeout=20, what="the reading"
    )


def test_subscribers_in_a_shared_group_split_one_stream(
    redis_client, all_queue_workers, start_subscriber, transactional_db
):
    from apps.core.intake_status import read_statuses
    from apps.core.redis_client import state_redis

    create_tenant_with_devices("acme", "sensor-001")
    for member in ("a", "b"):
        start_subscriber(MQTT_SHARED_GROUP="bus", MQTT_CLIENT_ID=f"shared-{member}")
    received_before = metric("mqtt_messages_received_total", prefix="device/")
    mqtt_publish(
        PORT,
        [("device/sensor-001/telemetry", telemetry(msg_id=f"s{i}")) for i in range(400)],
    )
    wait_for(lambda: TelemetryReading.objects.count() == 400, timeout=60, what="400 readings")

    def both_received() -> bool:
        statuses = {s.client_id: s for s in read_statuses(state_redis())}
        return all(statuses[f"shared-{m}"].last_message_at for m in ("a", "b"))

    wait_for(both_received, timeout=15, what="both group members to have received messages")
    assert ProcessedMessage.objects.count() == 400
    # Split, not copied: had $share been ignored, each member would have received all 400.
    received = metric("mqtt_messages_received_total", prefix="device/") - received_before
    assert received == 400


def test_a_retained_message_is_not_replayed_to_a_new_subscription(
    redis_client, all_queue_workers, start_subscriber, transactional_db
):
    create_tenant_with_devices("acme", "sensor-001")
    topic = "device/sensor-001/telemetry"
    # Published live before this subscriber's session existed, and kept by the broker.
    mqtt_publish(PORT, [(topic, telemetry(battery=11))], retain=True)
    try:
        start_subscriber()
        mqtt_publish(PORT, [(topic, telemetry(battery=77))])
        wait_for(lambda: TelemetryReading.objects.filter(battery=77).exists(), timeout=20)
        assert not TelemetryReading.objects.filter(battery=11).exists()
        assert not DeadLetter.objects.exists()
    finally:
        mqtt_publish(PORT, [(topic, b"")], retain=True)  # an empty retained payload clears it
