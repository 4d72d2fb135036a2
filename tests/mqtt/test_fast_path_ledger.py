"""The fast path end to end, held to the ledger (tests/ledger.py): a fleet's telemetry through
the real subscriber, Redis, the general worker and the channel layer, each message with exactly
one effect, and the battery rule's alerts exactly on the devices that report a low battery."""

from __future__ import annotations

import os

from apps.alerts.models import Alert
from tests import environment
from tests.factories import telemetry
from tests.ledger import Broadcasts, Fleet, settle_and_check
from tests.services import Service, mqtt_publish


def test_a_fleet_batches_through_the_bus_with_one_effect_per_message_and_the_right_alerts(
    bus: Service,
):
    fleet = Fleet.create(tenants=4, devices=100)
    low = set(fleet.devices[::7])
    # Each device's four messages one after the other: a batch holds several per device.
    published = [
        (
            f"device/{device}/telemetry",
            telemetry(battery=10 if device in low else 60, msg_id=f"fast-{device}-{k}"),
        )
        for device in fleet.devices
        for k in range(4)
    ]
    with Broadcasts(fleet.tenants) as broadcasts:
        mqtt_publish(environment.MQTT_PORT, published)
        settle_and_check(
            fleet, published, broadcasts, os.environ["REDIS_URL"], fault="none", timeout=60
        )
    active = Alert.objects.filter(alert_type="LOW_BATTERY", status="NEW")
    assert set(active.values_list("source_id", flat=True)) == low
    assert sum(active.values_list("count", flat=True)) <= 4 * len(low)
