"""Critical alerts on the NOC before their rows (apps/mqtt/announce.py): real Mosquitto, Redis,
Celery workers, subscriber and Daphne."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from apps.alerts.models import Alert
from apps.devices.models import Device
from apps.noc.auth import issue_access_token
from tests import environment
from tests.database import hold_the_writer
from tests.factories import create_tenant_with_devices, operator, panic
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
