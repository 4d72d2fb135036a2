"""What each kind of device may publish, at admission, through the real subscriber.

The expectations are written out here, not read from apps/mqtt/topics.py: a change to what a
kind may do must be made in both places, on purpose.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.core.models import DeadLetter, ProcessedMessage
from apps.devices.models import Device
from tests import environment
from tests.factories import gps, panic, payload, telemetry
from tests.services import Service, metric, mqtt_publish, python_service, wait_for

# One message of each sort a device can send, by name: (topic under the device's id, payload).
# Each has a msg_id, so its idempotency key (`<topic>#<msg_id>@…`) names its topic.
MESSAGES = {
    "telemetry": ("device/{id}/telemetry", telemetry(msg_id="1")),
    "gps": ("guard/{id}/gps", gps(msg_id="1")),
    "temperature": ("sensor/{id}/temperature", payload(type="temperature", value=21, msg_id="1")),
    "smoke reading": ("sensor/{id}/smoke", payload(type="smoke", value=3, msg_id="1")),
    "door reading": ("sensor/{id}/door", payload(type="door", state="closed", msg_id="1")),
    "system health": ("system/{id}/health", payload(cpu=12.0, msg_id="1")),
    "command answer": (
        "device/{id}/command_ack",
        payload(command_id=str(uuid.uuid4()), result="success", msg_id="1"),
    ),
    **{
        alert_type: (f"alert/{{id}}/{alert_type.lower()}", panic(alert_type=alert_type, msg_id="1"))
        for alert_type in ("PANIC", "SOS", "MEDICAL", "FIRE", "INTRUSION", "EQUIPMENT_FAILURE")
    },
}
EVERY_DEVICE = {"telemetry", "command answer", "EQUIPMENT_FAILURE"}
MAY_PUBLISH = {
    "sensor": EVERY_DEVICE | {"temperature"},
    "panic_button": EVERY_DEVICE | {"PANIC", "SOS", "MEDICAL"},
    "gps_tracker": EVERY_DEVICE | {"gps", "PANIC", "SOS", "MEDICAL"},
    "gateway": EVERY_DEVICE | {"system health"},
    "door": EVERY_DEVICE | {"temperature", "door reading", "INTRUSION"},
    "smoke": EVERY_DEVICE | {"temperature", "smoke reading", "FIRE"},
    "camera": EVERY_DEVICE | {"temperature", "door reading", "system health", "INTRUSION"},
    "other": EVERY_DEVICE,
}


def test_every_kind_of_device_has_its_expectations_here():
    assert set(MAY_PUBLISH) == set(Device.Kind.values)


@pytest.fixture(scope="module")
def subscriber(
    redis_server: Service,
    mosquitto_broker: Service,
    all_queue_workers: list[Service],
    scratch_dir: Path,
    django_db_setup: None,
) -> Iterator[Service]:
    """One subscriber for every kind's test (each test's device has its own id)."""
    service = python_service(
        "mqtt_subscriber",
        ["manage.py", "mqtt_subscriber"],
        scratch_dir / "log" / "admission-subscriber.log",
        env={**os.environ, "LOG_LEVEL": "INFO", "MQTT_CLIENT_ID": "test-admission-subscriber"},
    )
    wait_for(
        lambda: "Subscribed to device topics" in service.log(),
        timeout=30,
        what="the subscriber to connect and subscribe",
    )
    yield service
    service.stop()


@pytest.mark.parametrize("kind", sorted(MAY_PUBLISH))
def test_a_device_publishes_only_what_its_kind_may(
    kind: str, subscriber: Service, transactional_db: None
):
    from apps.devices.services import register_device
    from apps.tenants.models import Tenant

    device_id = f"{kind.replace('_', '-')}-9"
    register_device(Tenant.objects.create(name="acme"), device_id, kind)
    topics = {name: topic.format(id=device_id) for name, (topic, _) in MESSAGES.items()}
    refused_before = metric("mqtt_messages_rejected_total", reason="forbidden_for_kind")

    mqtt_publish(
        environment.MQTT_PORT, [(topics[name], body) for name, (_, body) in MESSAGES.items()]
    )

    def outcomes() -> tuple[set[str], dict[str, str]] | None:
        processed = {
            key.partition("#")[0].rpartition("|")[2]  # `<time>|<topic>#<msg_id>`: the topic
            for key in ProcessedMessage.objects.values_list("key", flat=True)
        }
        letters = dict(DeadLetter.objects.values_list("topic", "reason"))
        done = {name for name, topic in topics.items() if topic in processed}
        if len(done) + len(letters) < len(MESSAGES):
            return None
        return done, letters

    admitted, refused = wait_for(outcomes, timeout=30, what="every message processed or refused")
    assert admitted == MAY_PUBLISH[kind]
    assert set(refused.values()) <= {"forbidden_for_kind"}
    assert len(refused) == len(MESSAGES) - len(MAY_PUBLISH[kind])
    counted = metric("mqtt_messages_rejected_total", reason="forbidden_for_kind") - refused_before
    assert counted == len(refused)
    detail = DeadLetter.objects.values_list("detail", flat=True).first()
    if detail is not None:
        assert f"device {device_id!r} is a {kind} and may not" in detail
