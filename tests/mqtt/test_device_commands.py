"""Device commands end to end: real Mosquitto, subscriber, Redis, Celery workers and Daphne, and
a device that is a real MQTT client subscribed on its command topic."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from websockets.asyncio.client import ClientConnection, connect

from apps.core.models import DeadLetter
from apps.core.tasks.celery_settings import SWEEP_DEVICE_COMMANDS
from apps.devices.models import CommandStatus, Device, DeviceCommand
from apps.noc.auth import issue_access_token
from tests import environment
from tests.factories import create_tenant_with_devices, operator, payload, telemetry
from tests.services import DeviceClient, Service, metric, mqtt_publish, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

IGNORED = "device_command_acks_ignored_total"


def websocket(port: int, token: str) -> Any:
    return connect(
        f"ws://127.0.0.1:{port}/ws/noc/dashboard/",
        additional_headers={"Authorization": f"Bearer {token}"},
    )


class Stream:
    """What one NOC client received, read on demand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def until(self, check: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            message = json.loads(raw)
            self.seen.append(message)
            if check(message):
                return dict(message)

    async def until_type(self, message_type: str) -> dict[str, Any]:
        return await self.until(lambda m: m["type"] == message_type)

    async def until_status(self, command_id: str, status: str) -> dict[str, Any]:
        """Its event, even if it came before what the client waited for first (the command's
        QUEUED event and the action_done answer race)."""

        def wanted(m: dict[str, Any]) -> bool:
            return (
                m["type"] == "command_updated"
                and m["command_id"] == command_id
                and m["status"] == status
            )

        return next((m for m in self.seen if wanted(m)), None) or await self.until(wanted)

    def statuses(self, command_id: str) -> list[str]:
        return [
            m["status"]
            for m in self.seen
            if m["type"] == "command_updated" and m["command_id"] == command_id
        ]

    def devices_named(self) -> set[str]:
        return {str(m["device_id"]) for m in self.seen if "device_id" in m}


def ignored() -> dict[str, float]:
    reasons = ("unknown_command", "other_device", "duplicate", "too_late")
    return {reason: metric(IGNORED, reason=reason) for reason in reasons}


def test_a_command_reaches_the_device_its_answers_finish_it_and_only_its_tenant_sees_them(
    bus: Service, daphne_server: int
):
    acme = create_tenant_with_devices("acme", "door-7")
    globex = create_tenant_with_devices("globex", "door-9")
    alice_token = issue_access_token(operator(acme, "alice", password=None))
    bob_token = issue_access_token(operator(globex, "bob", password=None))
    door = DeviceClient("door-7", environment.MQTT_PORT)
    intruder = DeviceClient("door-9", environment.MQTT_PORT)
    before = ignored()

    async def scenario() -> tuple[str, Stream, Stream, dict[str, Any]]:
        async with (
            websocket(daphne_server, alice_token) as a,
            websocket(daphne_server, bob_token) as b,
        ):
            alice, bob = Stream(a), Stream(b)
            await alice.until_type("snapshot")
            await bob.until_type("snapshot")
            await a.send(
                json.dumps(
                    {
                        "type": "send_command",
                        "device_id": "door-7",
                        "command": "unlock",
                        "params": {"seconds": 5},
                    }
                )
            )
            command_id = (await alice.until_type("action_done"))["command_id"]
            await alice.until_status(command_id, "SENT")
            await asyncio.to_thread(door.received)
            await asyncio.to_thread(door.answer, command_id, "delivered")
            await alice.until_status(command_id, "DELIVERED")
            await asyncio.to_thread(door.answer, command_id, "success", "unlocked for 5 s")
            final = await alice.until_status(command_id, "SUCCEEDED")

            # Bob cannot reach acme's device; his own command's states are his alone.
            await b.send(
                json.dumps({"type": "send_command", "device_id": "door-7", "command": "x"})
            )
            refused = await bob.until_type("error")
            assert refused["error"] == "no such device"
            await b.send(
                json.dumps({"type": "send_command", "device_id": "door-9", "command": "x"})
            )
            theirs = (await bob.until_type("action_done"))["command_id"]
            await bob.until_status(theirs, "QUEUED")
            await a.send(json.dumps({"type": "heartbeat"}))
            await alice.until_type("heartbeat_ack")
            return command_id, alice, bob, final

    try:
        command_id, alice, bob, final = asyncio.run(scenario())
        [(topic, sent)] = door.commands
        assert topic == "command/door-7/unlock"
        assert sent["command_id"] == command_id
        assert sent["params"] == {"seconds": 5}
        assert sent["expires_at"] == final["expires_at"]
        assert alice.statuses(command_id) == ["QUEUED", "SENT", "DELIVERED", "SUCCEEDED"]
        assert final["result_detail"] == "unlocked for 5 s"
        assert final["transition"]["from_status"] == "DELIVERED"
        assert "door-9" not in alice.devices_named()
        assert bob.devices_named() == {"door-9"}

        # A second answer, an unknown command id, another device's answer: nothing changes.
        door.answer(command_id, "failure", "second thoughts")
        door.answer(str(uuid.uuid4()), "success")
        intruder.answer(command_id, "failure")
        expected = {"duplicate": 1, "unknown_command": 1, "other_device": 1, "too_late": 0}
        wait_for(
            lambda: {k: v - before[k] for k, v in ignored().items()} == expected,
            timeout=20,
            what=f"the ignored answers counted as {expected}",
        )
    finally:
        door.close()
        intruder.close()
    command = DeviceCommand.objects.get(pk=command_id)
    assert command.status == CommandStatus.SUCCEEDED
    assert command.result_detail == "unlocked for 5 s"
    history = list(command.transitions.values_list("from_status", "to_status", "by__username"))
    assert history == [
        ("", "QUEUED", "alice"),
        ("QUEUED", "SENT", None),
        ("SENT", "DELIVERED", None),
        ("DELIVERED", "SUCCEEDED", None),
    ]
    assert not DeadLetter.objects.exists()


def test_a_command_to_a_silent_device_expires_after_its_ttl_and_a_late_answer_changes_nothing(
    bus: Service, daphne_server: int
):
    from intelliwiz_config.celery import app

    alice = operator(create_tenant_with_devices("acme", "door-7"), "alice", password=None)
    api = APIClient()
    api.force_authenticate(alice)
    before = ignored()

    async def scenario() -> tuple[str, Stream]:
        async with websocket(daphne_server, issue_access_token(alice)) as ws:
            stream = Stream(ws)
            await stream.until_type("snapshot")
            response = await asyncio.to_thread(
                api.post,
                "/api/devices/door-7/commands/",
                {"command": "reboot", "ttl_seconds": 3},
                format="json",
            )
            command_id = response.json()["command_id"]
            # Nobody listens on the device's topic: the broker takes it all the same.
            sent = await stream.until_status(command_id, "SENT")
            expires_at = datetime.fromisoformat(sent["expires_at"])
            while timezone.now() <= expires_at:  # its TTL runs out; beat's sweep then ends it
                await asyncio.sleep(0.1)
            app.send_task(SWEEP_DEVICE_COMMANDS)
            await stream.until_status(command_id, "EXPIRED")
            return command_id, stream

    command_id, stream = asyncio.run(scenario())
    assert stream.statuses(command_id) == ["QUEUED", "SENT", "EXPIRED"]
    mqtt_publish(
        environment.MQTT_PORT,
        [("device/door-7/command_ack", payload(command_id=command_id, result="success"))],
    )
    wait_for(
        lambda: metric(IGNORED, reason="too_late") - before["too_late"] == 1,
        timeout=20,
        what="the late answer counted",
    )
    assert DeviceCommand.objects.get(pk=command_id).status == CommandStatus.EXPIRED


def test_a_command_to_an_offline_device_waits_until_the_device_is_heard_from_again(
    bus: Service, all_queue_workers: list[Service]
):
    alice = operator(create_tenant_with_devices("acme", "door-7"), "alice", password=None)
    Device.objects.filter(device_id="door-7").update(
        status=Device.Status.OFFLINE, last_seen=timezone.now() - timedelta(hours=1)
    )
    [external_api] = [w for w in all_queue_workers if w.name == "celery-external_api"]
    door = DeviceClient("door-7", environment.MQTT_PORT)
    api = APIClient()
    api.force_authenticate(alice)
    try:
        response = api.post("/api/devices/door-7/commands/", {"command": "arm"}, format="json")
        command_id = response.json()["command_id"]
        wait_for(
            lambda: any(
                "device command waits" in line and command_id in line
                for line in external_api.log().splitlines()
            ),
            timeout=20,
            what="the downlink's worker to hold the command for the offline device",
        )
        assert door.commands == []
        assert DeviceCommand.objects.get(pk=command_id).status == CommandStatus.QUEUED

        mqtt_publish(environment.MQTT_PORT, [("device/door-7/telemetry", telemetry())])
        [(topic, body)] = door.received()
    finally:
        door.close()
    assert topic == "command/door-7/arm"
    assert body["command_id"] == command_id
    wait_for(
        lambda: DeviceCommand.objects.get(pk=command_id).status == CommandStatus.SENT,
        timeout=20,
        what="the command recorded SENT",
    )
