"""Critical alerts on the NOC before their rows (apps/mqtt/announce.py): real Mosquitto, Redis,
Celery workers, subscriber and Daphne."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.utils import timezone
from websockets.asyncio.client import ClientConnection, connect

from apps.alerts.models import Alert
from apps.core.envelope import Envelope
from apps.devices.models import Device
from apps.mqtt.announce import _events
from apps.noc.auth import issue_access_token
from tests import environment
from tests.database import hold_the_writer
from tests.factories import create_tenant_with_devices, now_iso, operator, panic
from tests.noc.test_websocket import bearer, next_message, until_type, url
from tests.services import Service, metric, mqtt_publish

pytestmark = pytest.mark.django_db(transaction=True)


async def published(messages: list[tuple[str, str]]) -> None:
    await asyncio.to_thread(mqtt_publish, environment.MQTT_PORT, messages)


async def alert_frames(
    ws: ClientConnection, until: Any, timeout: float = 30
) -> list[dict[str, Any]]:
    """The alert frames (critical_alert, alert_updated) read until one satisfies `until`."""
    frames = []
    while True:
        message = await next_message(ws, timeout)
        if message["type"] in ("critical_alert", "alert_updated"):
            frames.append(message)
            if until(message):
                return frames


def test_a_critical_alert_reaches_its_tenants_noc_while_the_database_cannot_store_it(
    bus: Service, daphne_server: int
):
    acme = create_tenant_with_devices("acme", "panic-007")
    globex = create_tenant_with_devices("globex", "panic-900")
    Device.objects.filter(device_id="panic-007").update(site="HQ")
    sent_before = metric("mqtt_alerts_announced_total", outcome="sent")

    alice_token = issue_access_token(operator(acme, "alice"))
    bob_token = issue_access_token(operator(globex, "bob"))

    async def scenario() -> None:
        async with (
            connect(url(daphne_server), additional_headers=bearer(alice_token)) as alice,
            connect(url(daphne_server), additional_headers=bearer(bob_token)) as bob,
        ):
            await until_type(alice, "snapshot")
            await until_type(bob, "snapshot")
            # No alert row can be written meanwhile (on PostgreSQL, it asks for the table names).
            writer = await asyncio.to_thread(hold_the_writer, 4)
            try:
                await published(
                    [
                        ("alert/panic-007/medical", panic(alert_type="medical", severity="high")),
                        ("alert/panic-007/panic", panic(msg_id="first")),
                    ]
                )
                first = await until_type(alice, "critical_alert", timeout=3)
                assert await asyncio.to_thread(lambda: not Alert.objects.exists())
            finally:
                await asyncio.to_thread(writer.wait)
            assert first["provisional"] is True
            assert first["id"] is None
            assert (first["source_id"], first["alert_type"]) == ("panic-007", "PANIC")
            assert (first["severity"], first["status"]) == ("CRITICAL", "RECEIVED")
            assert first["site"] == "HQ"

            # Then the stored alert, with its id; the HIGH medical alert was never announced.
            frames = await alert_frames(alice, lambda m: m["type"] == "critical_alert")
            stored = frames[-1]
            assert stored["id"] == await asyncio.to_thread(
                lambda: Alert.objects.get(source_id="panic-007", alert_type="PANIC").pk
            )
            assert not stored.get("provisional")
            assert [m["alert_type"] for m in frames if m["type"] == "critical_alert"] == ["PANIC"]

            # A repeat of the active critical alert is an update, announced as nothing new.
            await published([("alert/panic-007/panic", panic(msg_id="again"))])
            frames = await alert_frames(
                alice, lambda m: m["type"] == "alert_updated" and m["count"] == 2
            )
            assert not [m for m in frames if m["type"] == "critical_alert"], frames

            # Bob, of another tenant, saw none of it: his first alert frame is his own device's.
            await published([("alert/panic-900/panic", panic())])
            seen = await alert_frames(bob, lambda m: True)
            assert (seen[0]["source_id"], seen[0]["provisional"]) == ("panic-900", True)

    asyncio.run(scenario())
    assert metric("mqtt_alerts_announced_total", outcome="sent") - sent_before == 2


def validated_panic(device_id: str, alert_type: str = "PANIC") -> Envelope:
    """An alert message as intake passes it on (types and severities upper-cased)."""
    topic = f"alert/{device_id}/{alert_type.lower()}"
    return Envelope(
        key=f"{topic}#{device_id}-{alert_type}",
        topic=topic,
        source_id=device_id,
        kind="alert",
        payload={"alert_type": alert_type, "severity": "CRITICAL", "timestamp": now_iso()},
        received_at=0.0,
    )


def test_only_what_the_stored_path_will_call_new_is_announced():
    acme = create_tenant_with_devices("acme", "panic-1", "panic-2", "panic-3", "panic-4")
    globex = create_tenant_with_devices("globex", "panic-9")
    Device.objects.filter(device_id="panic-1").update(site="HQ")

    def active(tenant: Any, device_id: str, alert_type: str, **fields: Any) -> None:
        fields = {"severity": "CRITICAL", "status": "NEW", **fields}
        now = timezone.now()
        Alert.objects.create(
            tenant=tenant, source_id=device_id, alert_type=alert_type, first_seen=now,
            last_seen=now, **fields,
        )  # fmt: skip

    active(acme, "panic-2", "PANIC")  # a repeat: alert_updated, announced as nothing
    active(acme, "panic-3", "PANIC", status="RESOLVED")  # closed: a new one follows
    active(acme, "panic-4", "PANIC", severity="HIGH")  # not critical: the repeat escalates it
    active(globex, "panic-1", "PANIC")  # another tenant's alert of the same id counts for none

    batch = [
        validated_panic("panic-1"),
        validated_panic("panic-1"),  # twice in one batch: one alert, announced once
        validated_panic("panic-1", "SOS"),  # another type of the same device: its own alert
        validated_panic("panic-2"),
        validated_panic("panic-2", "SOS"),
        validated_panic("panic-3"),
        validated_panic("panic-4"),
        validated_panic("ghost-1"),  # not registered: its task dead-letters it
        validated_panic("panic-9"),
    ]
    announced = [(e.tenant_id, e.data["source_id"], e.data["alert_type"]) for e in _events(batch)]
    assert announced == [
        (acme.pk, "panic-1", "PANIC"),
        (acme.pk, "panic-1", "SOS"),
        (acme.pk, "panic-2", "SOS"),
        (acme.pk, "panic-3", "PANIC"),
        (acme.pk, "panic-4", "PANIC"),
        (globex.pk, "panic-9", "PANIC"),
    ]
    assert _events(batch)[0].data["site"] == "HQ"
