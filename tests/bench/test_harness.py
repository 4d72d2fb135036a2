"""The parts of `make bench` that decide its figures: the load generator and the ledger.

The bench itself is not run here (it takes minutes); these hold its two instruments to what
they claim, against the real broker and database.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.load import publish
from tests import environment
from tests.ledger import Fleet, count_effects
from tests.services import Service, wait_for


def test_the_load_generator_delivers_each_message_once_and_each_devices_in_order(
    mosquitto_broker: Service, tmp_path: Any
):
    received: defaultdict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with lock:
            received[message.topic].append(json.loads(message.payload)["n"])

    subscribed = threading.Event()
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="harness-reader")
    reader.on_message = on_message
    reader.on_subscribe = lambda *args: subscribed.set()
    reader.connect("127.0.0.1", environment.MQTT_PORT)
    reader.subscribe("harness/#", qos=1)
    reader.loop_start()
    try:
        assert subscribed.wait(10)
        messages = [(f"harness/dev-{n % 50}/telemetry", json.dumps({"n": n})) for n in range(3000)]
        result = publish(environment.MQTT_PORT, messages, tmp_path, name="harness", processes=3)
        wait_for(
            lambda: sum(len(v) for v in received.values()) >= len(messages),
            timeout=30,
            what="every message at the reader",
        )
    finally:
        reader.disconnect()
        reader.loop_stop()
    assert result.acked == len(messages) == result.messages
    assert result.processes == 3
    assert result.rate > 0
    for topic, numbers in received.items():
        expected = [n for t, p in messages if t == topic for n in [json.loads(p)["n"]]]
        assert numbers == expected, f"{topic}: not once each, in order"


class Counted:
    """What NOC clients counted, by tenant (the interface bench/noc_clients.py offers)."""

    def __init__(self, counts: Counter[int]) -> None:
        self.counts = counts

    def telemetry_messages(self) -> Counter[int]:
        return self.counts


@pytest.mark.django_db
def test_the_ledger_counts_a_lost_message_a_second_reading_and_a_broadcast_counted_twice():
    from django.utils import timezone

    from apps.devices.models import Device, TelemetryReading

    fleet = Fleet.create(tenants=2, devices=4)
    published = fleet.telemetry(6, prefix="run")
    other_run = fleet.telemetry(2, prefix="earlier")
    now = timezone.now()

    def store(topic: str, payload: str, stamp: str) -> None:
        device = Device.objects.get(device_id=topic.split("/")[1])
        TelemetryReading.objects.create(
            tenant_id=device.tenant_id,
            device=device,
            idempotency_key=f"{stamp}|{topic}#{json.loads(payload)['msg_id']}",
            recorded_at=now,
            received_at=now,
        )

    for topic, payload in published[:5] + other_run:  # run-5 is never stored
        store(topic, payload, "t1")
    store(*published[0], "t2")  # run-0 stored a second time
    expected = Counter()
    for tenant, devices in fleet.tenants.items():
        expected[tenant] = sum(1 for t, _ in published if t.split("/")[1] in devices)
    first, second = fleet.tenants
    counted = Counter({first: expected[first] + 1, second: expected[second]})

    effects = count_effects(fleet, published, Counted(counted), prefix="run-")

    assert effects.lost == ["run-5"]
    assert effects.twice == ["run-0"]
    assert effects.extra == []  # the earlier run's readings are not this run's
    assert effects.broadcast_extra == 1
    assert effects.broadcast_missing == 0
    assert effects.lost_count == 1
    assert effects.duplicate_count == 2
