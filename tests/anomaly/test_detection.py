"""End to end on the real bus: a model trained on the ml_training worker streams its progress to
its tenant, and the next anomalous reading published over MQTT raises an ANOMALY alert that
reaches that tenant's dashboard and nobody else's."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from apps.alerts.models import Alert
from apps.anomaly.models import AnomalyModel
from apps.anomaly.tasks import train_anomaly_models
from apps.core.events import broadcast_to_noc_dashboard
from apps.devices.models import Device
from apps.noc.auth import issue_access_token
from tests import environment
from tests.anomaly.data import normal, store
from tests.factories import create_tenant_with_devices, operator, telemetry
from tests.services import Service, mqtt_publish

pytestmark = pytest.mark.django_db(transaction=True)

Message = dict[str, Any]
FINAL_STAGES = ("trained", "kept", "failed")


async def read_until(
    ws: ClientConnection, done: Callable[[Message], bool], timeout: float
) -> list[Message]:
    """Every message up to and including the first that is `done`."""
    deadline = time.monotonic() + timeout
    seen: list[Message] = []
    while True:
        remaining = max(0.01, deadline - time.monotonic())
        seen.append(json.loads(await asyncio.wait_for(ws.recv(), remaining)))
        if done(seen[-1]):
            return seen


def test_a_trained_model_flags_the_next_anomaly_on_its_tenants_dashboard_only(
    bus: Service, daphne_server: int
):
    acme = create_tenant_with_devices("acme", "sensor-a1", "sensor-a2", "sensor-a3")
    globex = create_tenant_with_devices("globex", "sensor-g1")
    store(list(Device.objects.filter(tenant=acme)), normal(np.random.default_rng(5), 600))
    headers = {
        name: {"Authorization": f"Bearer {issue_access_token(operator(tenant, name))}"}
        for name, tenant in (("alice", acme), ("bob", globex))
    }
    url = f"ws://127.0.0.1:{daphne_server}/ws/noc/dashboard/"
    barrier = uuid.uuid4().hex

    async def scenario() -> tuple[list[Message], list[Message], list[Message]]:
        async with (
            connect(url, additional_headers=headers["alice"]) as alice,
            connect(url, additional_headers=headers["bob"]) as bob,
        ):
            await read_until(alice, lambda m: m["type"] == "snapshot", 10)
            await read_until(bob, lambda m: m["type"] == "snapshot", 10)
            # On the ml_training worker, as beat sends it.
            await asyncio.to_thread(train_anomaly_models.delay, acme.pk)
            progress = await read_until(
                alice,
                lambda m: m["type"] == "task_progress" and m["stage"] in FINAL_STAGES,
                60,
            )

            # The general worker loads the new model within ANOMALY_MODEL_CHECK_SECONDS (1 s
            # here): until it has, a reading is not scored, so an overheating reading is sent
            # again every 2 s until the dashboard shows one detected.
            deadline = time.monotonic() + 20
            for attempt in range(1, 100):
                hot = telemetry(battery=80, signal=-64, temperature=85, msg_id=f"hot-{attempt}")
                await asyncio.to_thread(
                    mqtt_publish, environment.MQTT_PORT, [("device/sensor-a1/telemetry", hot)]
                )
                try:
                    seen = await read_until(alice, lambda m: m["type"] == "anomaly_detected", 2)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "no anomaly_detected within 20 s"

            # Whatever reached bob before this event of his own tenant is all he was sent.
            data = {"barrier": barrier}
            await asyncio.to_thread(
                broadcast_to_noc_dashboard, "task_progress", data, tenant_id=globex.pk
            )
            seen_by_bob = await read_until(bob, lambda m: m.get("barrier") == barrier, 10)
            return progress, seen, seen_by_bob

    progress, seen, seen_by_bob = asyncio.run(scenario())

    steps = [m for m in progress if m["type"] == "task_progress"]
    assert [m["stage"] for m in steps] == ["reading", "fitting", "trained"], steps
    assert [m["done"] for m in steps] == [0, 1, 3]
    assert all(m["tenant_id"] == acme.pk and m["device_kind"] == "sensor" for m in steps)
    assert "model v1 from 600 readings" in steps[-1]["message"]

    detected = seen[-1]
    assert detected["source_id"] == "sensor-a1"
    assert detected["alert_type"] == "ANOMALY"
    assert detected["score"] >= detected["threshold"]
    assert detected["model_version"] == 1
    assert detected["features"] == {"battery": 80, "signal": -64, "temperature": 85}
    # The alert itself, through the lifecycle, as the dashboard lists alerts.
    alerts = [m for m in seen if m["type"] == "alert_updated" and m["alert_type"] == "ANOMALY"]
    assert alerts, [m["type"] for m in seen]
    assert alerts[-1]["id"] == detected["id"]
    alert = Alert.objects.get(pk=detected["id"])
    assert (alert.tenant_id, alert.severity, alert.status) == (acme.pk, "HIGH", "NEW")
    assert "deviations from normal" in alert.message
    assert "temperature 85" in alert.message
    assert AnomalyModel.objects.get(tenant=acme).version == 1

    assert [m["type"] for m in seen_by_bob if m["type"] not in ("connected", "snapshot")] == [
        "task_progress"
    ], seen_by_bob
