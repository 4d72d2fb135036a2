"""Alerts on a session of their own (`mqtt_subscriber --lane urgent`): real Mosquitto, Redis,
Celery workers and subscriber processes."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest
from django.test import Client

from apps.alerts.models import Alert
from apps.core.intake_status import write_status
from apps.devices.models import TelemetryReading
from apps.mqtt.subscriber import Lane, SubscriberConfig
from tests import environment
from tests.factories import create_tenant_with_devices, panic, telemetry
from tests.services import metric, mqtt_publish, wait_for

PORT = environment.MQTT_PORT
WINDOW = 5  # the telemetry session's receive maximum: 5 unacknowledged messages fill it


def config(lane: Lane, shared_group: str = "") -> SubscriberConfig:
    return replace(SubscriberConfig.from_settings(lane), shared_group=shared_group)


def filters(lane: Lane, shared_group: str = "") -> list[str]:
    return [topic for topic, _options in config(lane, shared_group).subscriptions()]


def test_the_urgent_lane_reads_alerts_and_the_routine_lane_everything_else():
    assert filters(Lane.URGENT) == ["alert/#"]
    assert filters(Lane.ROUTINE) == ["guard/#", "device/#", "sensor/#", "system/#"]
    assert sorted(filters(Lane.ALL)) == sorted(filters(Lane.URGENT) + filters(Lane.ROUTINE))
    assert filters(Lane.URGENT, "bus") == ["$share/bus/alert/#"]


def test_the_urgent_lane_has_its_own_session_named_after_the_subscribers(settings):
    settings.MQTT_CLIENT_ID = "bus-subscriber"
    assert SubscriberConfig.from_settings(Lane.URGENT).client_id == "bus-subscriber-urgent"
    assert SubscriberConfig.from_settings(Lane.ROUTINE).client_id == "bus-subscriber"
    assert SubscriberConfig.from_settings(Lane.ALL).client_id == "bus-subscriber"


def test_a_kept_session_drops_the_filters_of_the_other_lane():
    """A session that read every kind before the lanes were split must stop reading alerts,
    and one kept from before MQTT_SHARED_GROUP was set its plain filters."""
    assert "alert/#" in config(Lane.ROUTINE).stale_filters()
    assert "device/#" not in config(Lane.ROUTINE).stale_filters()
    assert "device/#" in config(Lane.URGENT).stale_filters()
    shared = config(Lane.ROUTINE, "bus").stale_filters()
    assert {"device/#", "alert/#", "$share/bus/alert/#"} <= set(shared)
    assert "$share/bus/device/#" not in shared


def test_an_alert_is_processed_while_the_telemetry_session_holds_a_full_window_unacknowledged(
    redis_client, all_queue_workers, start_subscriber, transactional_db
):
    create_tenant_with_devices("acme", "sensor-001", "panic-007")
    routine = start_subscriber(lane="routine", MQTT_RECEIVE_MAXIMUM=str(WINDOW))
    start_subscriber(lane="urgent")
    routine.signal(signal.SIGSTOP)  # its hand-off stalls: nothing it was sent is acknowledged
    try:
        telemetry_batch = [
            ("device/sensor-001/telemetry", telemetry(msg_id=f"t{i}")) for i in range(10 * WINDOW)
        ]
        mqtt_publish(PORT, telemetry_batch)
        mqtt_publish(PORT, [("alert/panic-007/panic", panic())])
        wait_for(
            lambda: Alert.objects.filter(source_id="panic-007", alert_type="PANIC").exists(),
            timeout=30,
            what="the panic alert, past a telemetry session with a full window",
        )
        assert not TelemetryReading.objects.exists()  # the telemetry was indeed still held
    finally:
        routine.signal(signal.SIGCONT)
    wait_for(
        lambda: TelemetryReading.objects.count() == len(telemetry_batch),
        timeout=60,
        what="the held telemetry, once its subscriber resumed",
    )
    assert Alert.objects.filter(source_id="panic-007").count() == 1


def test_a_session_that_read_every_kind_stops_reading_alerts_once_it_is_the_routine_lane(
    redis_client, all_queue_workers, start_subscriber, transactional_db
):
    create_tenant_with_devices("acme", "panic-007")
    start_subscriber(lane="all").stop()  # the session, as the release before the lanes left it
    start_subscriber(lane="routine")
    start_subscriber(lane="urgent")
    received_before = metric("mqtt_messages_received_total", prefix="alert/")
    mqtt_publish(PORT, [("alert/panic-007/panic", panic())])
    wait_for(lambda: Alert.objects.filter(source_id="panic-007").exists(), timeout=30)
    wait_for(
        lambda: metric("mqtt_messages_received_total", prefix="alert/") > received_before,
        timeout=10,
        what="the receipt to be counted",
    )
    # One receipt: had the routine session kept `alert/#`, both sessions would have had it.
    assert metric("mqtt_messages_received_total", prefix="alert/") - received_before == 1


@pytest.mark.django_db
def test_health_fails_naming_alerts_when_no_connected_subscriber_reads_them(
    client: Client, redis_client
):
    write_status(
        redis_client,
        "routine-only",
        connected=True,
        last_message_at=None,
        kinds=SubscriberConfig.from_settings(Lane.ROUTINE).kinds,
    )
    check = client.get("/monitoring/health/").json()["checks"]["mqtt_subscriber"]
    assert check["ok"] is False
    assert "no connected subscriber reads alert/" in check["error"]
    assert "--lane urgent" in check["error"]


def test_the_routine_lane_yields_the_cpu_to_the_urgent_lane(start_subscriber, transactional_db):
    import psutil

    from apps.mqtt.subscriber import ROUTINE_NICE

    routine = start_subscriber("routine")
    urgent = start_subscriber("urgent")
    assert ROUTINE_NICE > 0
    assert psutil.Process(routine.pid).nice() == psutil.Process().nice() + ROUTINE_NICE
    assert psutil.Process(urgent.pid).nice() == psutil.Process().nice()
    # SCHED_IDLE: a normal process waking on a core the routine lane holds takes it at once.
    assert os.sched_getscheduler(routine.pid) == os.SCHED_IDLE
    assert os.sched_getscheduler(urgent.pid) == os.SCHED_OTHER
