"""The subscriber's registry cache: one query for a whole fleet, not one per device."""

from __future__ import annotations

from typing import Any

import pytest

from apps.devices.models import Device
from apps.mqtt.directory import DeviceDirectory
from tests.factories import create_tenant_with_devices

pytestmark = pytest.mark.django_db


def test_a_fleet_heard_from_for_the_first_time_costs_one_registry_query(
    django_assert_num_queries: Any,
) -> None:
    ids = [f"sensor-{n:03d}" for n in range(60)]
    create_tenant_with_devices("acme", *ids)
    directory = DeviceDirectory()
    with django_assert_num_queries(1):
        kinds = {device_id: directory.kind_of(device_id, Device.Kind.SENSOR) for device_id in ids}
    assert kinds == dict(Device.objects.values_list("device_id", "kind"))


def test_a_device_registered_after_the_registry_was_read_is_still_admitted() -> None:
    create_tenant_with_devices("acme", "sensor-001")
    directory = DeviceDirectory()
    assert directory.kind_of("sensor-001", Device.Kind.SENSOR) == Device.Kind.SENSOR
    assert directory.kind_of("sensor-002", Device.Kind.SENSOR) is None  # not registered yet
    create_tenant_with_devices("globex", "sensor-003")
    assert directory.kind_of("sensor-003", Device.Kind.SENSOR) == Device.Kind.SENSOR
