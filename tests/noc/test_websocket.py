"""The NOC WebSocket on a real Daphne, Redis channel layer, Mosquitto and Celery workers."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import psutil
import pytest
import redis
from django.conf import settings
from django.test import override_settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.alerts.models import Alert
from apps.alerts.services import AlertSignal, raise_alert
from apps.devices.models import Device
from apps.noc.auth import issue_access_token
from apps.tenants.models import Tenant, User
from tests import environment
from tests.conftest import start_daphne
from tests.factories import create_tenant_with_devices, operator, panic
from tests.services import Service, metric, mqtt_publish, stalled_websocket, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws/noc/dashboard/{query}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def next_message(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def until_type(ws: ClientConnection, message_type: str, timeout: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = await next_message(ws, max(0.01, deadline - time.monotonic()))
        if message["type"] == message_type:
            return message


async def close_code(port: int, *, query: str = "", **options: Any) -> int | None:
    """The close code the server ends the connection with, before sending any data."""
    async with connect(url(port, query), **options) as ws:
        try:
            message = await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        raise AssertionError(f"the server sent data to a refused client: {message}")


def claims(user: User, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(tz=UTC)
    base = {
        "token_type": "access",
        "user_id": str(user.pk),
        "tenant_id": user.tenant_id,
        "jti": "test",
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=5),
        "aud": settings.JWT_AUDIENCE,
        "iss": settings.JWT_ISSUER,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def signed(payload: dict[str, Any], key: str | None = None) -> str:
    return jwt.encode(payload, key or settings.JWT_SIGNING_KEY, algorithm="HS256")


def test_an_operator_gets_connected_then_a_panic_alert_within_a_second_and_others_get_nothing(
    bus: Service, daphne_server: int
):
    acme = create_tenant_with_devices("acme", "panic-007")
    globex = create_tenant_with_devices("globex", "panic-900")
    acme_token = issue_access_token(operator(acme, "alice"))
    globex_token = issue_access_token(operator(globex, "bob"))

    async def scenario() -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
        async with (
            connect(url(daphne_server), additional_headers=bearer(acme_token)) as alice,
            connect(url(daphne_server), additional_headers=bearer(globex_token)) as bob,
        ):
            assert await next_message(alice) == {"type": "connected", "tenant_id": acme.pk}
            assert (await next_message(bob))["tenant_id"] == globex.pk
            snapshot = await until_type(alice, "snapshot")
            assert snapshot["alerts"] == []
            assert [d["device_id"] for d in snapshot["devices"]] == ["panic-007"]
            await until_type(bob, "snapshot")

            await asyncio.to_thread(
                mqtt_publish, environment.MQTT_PORT, [("alert/panic-007/panic", panic())]
            )
            published = time.monotonic()
            alert = await until_type(alice, "critical_alert", timeout=5)
            latency = time.monotonic() - published

            # A later alert of bob's own tenant proves bob's stream is live; nothing of acme's
            # may come before it.
            await asyncio.to_thread(
                mqtt_publish, environment.MQTT_PORT, [("alert/panic-900/panic", panic())]
            )
            seen_by_bob = []
            while True:
                message = await next_message(bob, timeout=5)
                seen_by_bob.append(message)
                if message["type"] == "critical_alert":
                    break
            return alert, latency, seen_by_bob

    alert, latency, seen_by_bob = asyncio.run(scenario())
    assert alert["source_id"] == "panic-007"
    assert alert["alert_type"] == "PANIC"
    assert alert["seq"] >= 2
    assert latency < 1.0, f"the alert took {latency:.2f} s to reach the NOC"
    assert [m["source_id"] for m in seen_by_bob if "source_id" in m] == ["panic-900"]
    # Whatever the event (alerts name a source_id; device status and telemetry a device_id, one
    # by one or in a list), bob sees none of acme's devices.
    named = {name for message in seen_by_bob for name in devices_named(message)}
    assert named == {"panic-900"}, named


def devices_named(message: dict[str, object]) -> set[str]:
    """Every device a NOC message names, at its top level or in its lists of devices."""
    names = {str(message[key]) for key in ("source_id", "device_id") if key in message}
    for value in message.values():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    names |= devices_named(item)
    return names


@pytest.fixture
def alice(redis_client: object) -> User:
    return operator(create_tenant_with_devices("acme", "panic-007"), "alice")


# Forged, stale, misdirected and misplaced tokens: tests/security/test_jwt.py (both doors).


def test_no_token_is_refused_with_4401(daphne_server, alice):
    assert asyncio.run(close_code(daphne_server)) == 4401


def test_a_user_without_a_tenant_is_refused(daphne_server, redis_client):
    token = issue_access_token(operator(None, "staff-only"))
    assert asyncio.run(close_code(daphne_server, additional_headers=bearer(token))) == 4401


def test_a_user_without_the_noc_permission_gets_4403(daphne_server, redis_client):
    tenant = Tenant.objects.create(name="acme")
    token = issue_access_token(operator(tenant, "visitor", permissions=False))
    assert asyncio.run(close_code(daphne_server, additional_headers=bearer(token))) == 4403


def test_a_foreign_origin_is_refused_at_the_handshake(daphne_server, alice):
    token = issue_access_token(alice)

    async def attempt() -> int:
        try:
            async with connect(
                url(daphne_server), additional_headers=bearer(token), origin="https://evil.example"
            ):
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    assert asyncio.run(attempt()) == 403


def test_more_than_100_messages_a_minute_close_the_connection(daphne_server, alice):
    token = issue_access_token(alice)

    async def flood() -> int | None:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            try:
                for _ in range(150):
                    await ws.send('{"type": "heartbeat"}')
                while True:
                    await next_message(ws)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(flood()) == 4429


def test_a_frame_over_64_kib_closes_the_connection(daphne_server, alice):
    token = issue_access_token(alice)

    async def oversize() -> int | None:
        async with connect(
            url(daphne_server), additional_headers=bearer(token), max_size=None
        ) as ws:
            await until_type(ws, "snapshot")
            await ws.send(json.dumps({"type": "heartbeat", "pad": "x" * (65 * 1024)}))
            try:
                while True:
                    await next_message(ws)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(oversize()) == 4009


def test_a_token_that_expires_during_the_connection_closes_it(daphne_server, alice):
    now = datetime.now(tz=UTC)
    token = signed(claims(alice, exp=now + timedelta(seconds=2)))

    async def ride() -> int | None:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            try:
                while True:
                    await next_message(ws, timeout=10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(ride()) == 4401


def test_heartbeats_are_answered_bad_messages_get_errors_and_every_event_is_numbered(
    daphne_server, alice
):
    token = issue_access_token(alice)

    async def talk() -> list[dict[str, Any]]:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            replies = []
            for frame in ['{"type": "heartbeat"}', "not json", '{"type": "dance"}', "{}"]:
                await ws.send(frame)
                replies.append(await next_message(ws))
            return replies

    replies = asyncio.run(talk())
    assert [reply["type"] for reply in replies] == ["heartbeat_ack", "error", "error", "error"]
    sequence = [reply["seq"] for reply in replies]
    assert sequence == sorted(sequence)
    assert len(set(sequence)) == 4


def test_acknowledging_over_the_socket_is_recorded_and_seen_by_a_colleague(daphne_server, alice):
    colleague = operator(alice.tenant, "carol")
    device = Device.objects.get(device_id="panic-007")
    event = raise_alert(
        AlertSignal(
            device=device, alert_type="PANIC", severity="CRITICAL", seen_at=datetime.now(tz=UTC)
        )
    )
    alert_id = event.data["id"]

    async def act() -> tuple[dict[str, Any], dict[str, Any]]:
        async with (
            connect(url(daphne_server), additional_headers=bearer(issue_access_token(alice))) as a,
            connect(
                url(daphne_server), additional_headers=bearer(issue_access_token(colleague))
            ) as c,
        ):
            snapshot = await until_type(c, "snapshot")
            assert [item["id"] for item in snapshot["alerts"]] == [alert_id]
            await until_type(a, "snapshot")
            await a.send(json.dumps({"type": "acknowledge_alert", "alert_id": alert_id}))
            done = await until_type(a, "action_done")
            return done, await until_type(c, "alert_updated")

    done, update = asyncio.run(act())
    assert done["alert_id"] == alert_id
    assert update["status"] == "ACKNOWLEDGED"
    step = Alert.objects.get(pk=alert_id).transitions.get()
    assert (step.to_status, step.by) == ("ACKNOWLEDGED", alice)


def test_an_alert_of_another_tenant_cannot_be_touched(daphne_server, alice):
    other = create_tenant_with_devices("globex", "panic-900")
    device = Device.objects.get(device_id="panic-900")
    event = raise_alert(
        AlertSignal(
            device=device, alert_type="PANIC", severity="CRITICAL", seen_at=datetime.now(tz=UTC)
        )
    )

    async def act() -> dict[str, Any]:
        async with connect(
            url(daphne_server), additional_headers=bearer(issue_access_token(alice))
        ) as ws:
            await until_type(ws, "snapshot")
            await ws.send(json.dumps({"type": "resolve_alert", "alert_id": event.data["id"]}))
            return await until_type(ws, "error")

    assert asyncio.run(act())["error"] == "no such alert"
    assert Alert.objects.get(tenant=other).status == "NEW"


def test_a_long_lived_connection_outlives_the_channel_layers_group_expiry(
    redis_client: object, alice: User, scratch_dir: Path
):
    from apps.core.events import broadcast_to_noc_dashboard

    expiry = 2
    service, port = start_daphne(
        scratch_dir / "log" / "daphne-expiry.log", CHANNELS_GROUP_EXPIRY=str(expiry)
    )
    token = issue_access_token(alice)

    async def listen() -> dict[str, Any]:
        async with connect(url(port), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            connected_at = time.monotonic()
            # Wait out three expiry periods (a deadline on elapsed time, with the socket open).
            await asyncio.to_thread(
                wait_for, lambda: time.monotonic() - connected_at > 3 * expiry, timeout=30
            )
            await asyncio.to_thread(
                broadcast_to_noc_dashboard,
                "device_status",
                {"devices": [{"device_id": "panic-007", "site": "", "status": "OFFLINE"}]},
                tenant_id=alice.tenant_id,
            )
            return await until_type(ws, "device_status")

    # This test process's channel layer must expire groups the same way as the server's; the
    # setting's change (on entry and on exit) makes Channels build its layer afresh, so no later
    # test inherits a layer that drops every group member older than 2 s.
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["group_expiry"] = expiry
    try:
        with override_settings(CHANNEL_LAYERS=layers):
            assert asyncio.run(listen())["devices"][0]["status"] == "OFFLINE"
    finally:
        service.stop()


def test_channel_layer_messages_are_not_readable_in_redis(redis_client: Any):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    marker = "PLAINTEXT-MARKER-7f3a"
    layer = get_channel_layer()

    async def park() -> None:
        await layer.group_add("noc.tenant.999", "nobody.reads!this")
        await layer.group_send("noc.tenant.999", {"type": "critical_alert", "data": {"m": marker}})

    async_to_sync(park)()
    db2 = redis.Redis.from_url(settings.CHANNELS_REDIS_URL)
    keys = list(db2.scan_iter("*"))
    assert keys, "the parked message should be in Redis"
    dump = b"".join(db2.dump(key) or b"" for key in keys)
    assert marker.encode() not in dump
    assert b"critical_alert" not in dump


def test_daphne_refuses_to_start_without_the_encryption_key_outside_debug(tmp_path: Path):
    daphne = str(Path(sys.executable).parent / "daphne")
    result = subprocess.run(
        [daphne, "-b", "127.0.0.1", "-p", "0", "intelliwiz_config.asgi:application"],
        env={
            **os.environ,
            "DJANGO_DEBUG": "false",
            "CHANNELS_ENCRYPTION_KEY": "",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "CHANNELS_ENCRYPTION_KEY must be set outside DEBUG" in result.stderr


def test_filters_narrow_the_stream_and_unsubscribe_silences_it(daphne_server, alice):
    from apps.core.events import broadcast_to_noc_dashboard

    token = issue_access_token(alice)

    def alert(severity: str, source: str) -> None:
        data = {"id": 1, "source_id": source, "severity": severity, "site": "", "status": "NEW"}
        broadcast_to_noc_dashboard("alert_updated", data, tenant_id=alice.tenant_id)

    async def watch() -> list[dict[str, Any]]:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            await ws.send(json.dumps({"type": "subscribe", "filters": {"severity": ["CRITICAL"]}}))
            await until_type(ws, "subscribed")
            await asyncio.to_thread(alert, "LOW", "quiet-1")
            await asyncio.to_thread(alert, "CRITICAL", "loud-1")
            first = await until_type(ws, "alert_updated")
            await ws.send('{"type": "unsubscribe"}')
            await until_type(ws, "unsubscribed")
            await asyncio.to_thread(alert, "CRITICAL", "loud-2")
            # A heartbeat round trip after the broadcast: nothing else may arrive before it.
            await ws.send('{"type": "heartbeat"}')
            rest = [await next_message(ws)]
            return [first, *rest]

    first, after = asyncio.run(watch())
    assert first["source_id"] == "loud-1"
    assert after["type"] == "heartbeat_ack"


def test_a_tenants_status_changes_come_in_one_event_narrowed_to_the_clients_site(
    daphne_server, alice
):
    from apps.core.events import broadcast_to_noc_dashboard

    token = issue_access_token(alice)

    def device(device_id: str, site: str) -> dict[str, Any]:
        return {"device_id": device_id, "site": site, "status": "ONLINE"}

    def batch() -> None:
        devices = [device("north-1", "north"), device("south-1", "south")]
        devices.append(device("north-2", "north"))
        broadcast_to_noc_dashboard("device_status", {"devices": devices}, tenant_id=alice.tenant_id)
        # As a release before this one sent it (an outbox resend across the upgrade).
        broadcast_to_noc_dashboard(
            "device_status", device("north-3", "north"), tenant_id=alice.tenant_id
        )
        broadcast_to_noc_dashboard(
            "device_status", device("south-2", "south"), tenant_id=alice.tenant_id
        )
        end = {"devices": [device("last", "north")]}  # every client sees it, after the rest
        broadcast_to_noc_dashboard("device_status", end, tenant_id=alice.tenant_id)

    async def watch(filters: dict[str, Any] | None) -> list[dict[str, Any]]:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            if filters is not None:
                await ws.send(json.dumps({"type": "subscribe", "filters": filters}))
                await until_type(ws, "subscribed")
            await asyncio.to_thread(batch)
            received = [await next_message(ws)]
            while received[-1].get("devices") != [device("last", "north")]:
                received.append(await next_message(ws))
            return received[:-1]

    def shown(messages: list[dict[str, Any]]) -> list[list[str]]:
        assert {m["type"] for m in messages} == {"device_status"}
        return [[d["device_id"] for d in m["devices"]] for m in messages]

    assert shown(asyncio.run(watch(None))) == [
        ["north-1", "south-1", "north-2"],
        ["north-3"],
        ["south-2"],
    ]
    assert shown(asyncio.run(watch({"site": "north"}))) == [["north-1", "north-2"], ["north-3"]]


def test_telemetry_is_conflated_to_the_latest_values_per_device(daphne_server, alice):
    from apps.core.events import broadcast_to_noc_dashboard

    token = issue_access_token(alice)

    def burst() -> None:
        for battery in range(1, 51):
            data = {"devices": [{"device_id": "panic-007", "site": "", "battery": battery}]}
            broadcast_to_noc_dashboard("telemetry_update", data, tenant_id=alice.tenant_id)

    async def watch() -> list[dict[str, Any]]:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            await asyncio.to_thread(burst)
            updates = [await until_type(ws, "telemetry_update")]
            while updates[-1]["devices"][0]["battery"] != 50:
                updates.append(await until_type(ws, "telemetry_update"))
            return updates

    updates = asyncio.run(watch())
    assert len(updates) < 10, f"{len(updates)} updates for 50 readings: not conflated"
    assert sum(update["messages"] for update in updates) == 50


def still_connected(sock: socket.socket) -> bool:
    """Whether the kernel still holds this client's connection as established."""
    local = sock.getsockname()
    return any(
        tuple(conn.laddr) == local and conn.status == psutil.CONN_ESTABLISHED
        for conn in psutil.Process().net_connections(kind="tcp")
    )


# A frame is counted in the bytes it takes on the wire: "é" is two in UTF-8, and a client sent
# the limit's worth in characters only would never be cut off.
@pytest.mark.parametrize("letter", ["x", "é"], ids=["ascii", "two-byte-utf8"])
def test_a_client_that_stops_reading_is_cut_off_and_counted_while_a_colleague_gets_every_event(
    daphne_server, alice, letter
):
    from apps.core.events import Event, EventType, broadcast_events

    token = issue_access_token(alice)
    # One and a half times what a client may leave unacknowledged, in the largest alerts a
    # device can send (2,000 bytes), sent 50 at a time: the channel layer holds 100 messages per
    # Daphne process. Counted in characters, the two-byte letter's frames stay under the limit.
    message = letter * (2000 // len(letter.encode()))
    chunks = [
        range(start, start + 50)
        for start in range(0, 3 * settings.NOC_MAX_UNACKED_BYTES // 2 // 2000, 50)
    ]
    dropped_before = metric("noc_events_dropped_total", reason="client_behind")
    cut_off_before = metric("noc_clients_cut_off_total")

    def broadcast(message_type: EventType, alert_ids: Iterable[int]) -> None:
        data = {"source_id": "panic-007", "severity": "CRITICAL", "site": "", "status": "NEW"}
        events = [
            Event(alice.tenant_id, message_type, {**data, "id": i, "message": message})
            for i in alert_ids
        ]
        broadcast_events(events)

    def until_cut_off(stalled: socket.socket) -> None:
        try:
            wait_for(lambda: not still_connected(stalled), timeout=30, what="the cut-off")
        except TimeoutError as exc:
            cut = metric("noc_clients_cut_off_total") - cut_off_before
            raise TimeoutError(
                f"{exc}; clients cut off meanwhile: {cut} (0: the stalled one was not sent "
                "enough to be behind; 1: cut off, but its connection stayed open)"
            ) from None

    async def scenario() -> tuple[list[int], dict[str, Any]]:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as colleague:
            await until_type(colleague, "snapshot")
            with stalled_websocket(daphne_server, token, after_snapshot=True) as stalled:
                received = []
                for number, chunk in enumerate(chunks, 1):
                    await asyncio.to_thread(broadcast, EventType.ALERT_UPDATED, chunk)
                    while True:
                        update = await until_type(colleague, "alert_updated")
                        received.append(update["id"])
                        if update["id"] == chunk[-1]:
                            break
                    if number % 4 == 0:  # now and then, as the dashboard does
                        await colleague.send(json.dumps({"type": "ack", "seq": update["seq"]}))
                await asyncio.to_thread(until_cut_off, stalled)
                # After the cut-off the colleague is still served: the alert sent last arrives.
                await asyncio.to_thread(broadcast, EventType.CRITICAL_ALERT, [-1])
                return received, await until_type(colleague, "critical_alert")

    received, alert = asyncio.run(scenario())
    assert received == [i for chunk in chunks for i in chunk]  # every one, once, in order
    assert alert["id"] == -1
    assert metric("noc_clients_cut_off_total") == cut_off_before + 1  # the stalled one only
    assert metric("noc_events_dropped_total", reason="client_behind") > dropped_before


def test_an_event_resent_with_its_id_is_shown_once_to_each_client(daphne_server, alice):
    """The outbox may send an event again when its first send's outcome was unknown; the same
    id marks it, and each dashboard sees it once: the Daphne process drops it for all its
    clients, and the first sending still reaches every one of them."""
    from apps.core.events import Event, EventType, broadcast_events
    from tests.services import metric

    token = issue_access_token(alice)
    colleague_token = issue_access_token(operator(alice.tenant, "carol"))
    data = {"id": 7, "source_id": "panic-1", "severity": "CRITICAL", "site": "", "status": "NEW"}
    event = Event(alice.tenant_id, EventType.ALERT_UPDATED, data)
    dropped_before = metric("noc_events_dropped_total", reason="duplicate")

    async def until_shown(ws: ClientConnection) -> list[dict[str, Any]]:
        shown = [await until_type(ws, "alert_updated"), await until_type(ws, "alert_updated")]
        await ws.send('{"type": "heartbeat"}')
        return [*shown, await next_message(ws)]

    async def watch() -> list[list[dict[str, Any]]]:
        async with (
            connect(url(daphne_server), additional_headers=bearer(token)) as ws,
            connect(url(daphne_server), additional_headers=bearer(colleague_token)) as colleague,
        ):
            await until_type(ws, "snapshot")
            await until_type(colleague, "snapshot")
            for _ in range(3):  # sent, then resent twice
                await asyncio.to_thread(broadcast_events, [event], None, ["41:0"])
            later = Event(alice.tenant_id, EventType.ALERT_UPDATED, {**data, "id": 8})
            await asyncio.to_thread(broadcast_events, [later], None, ["42:0"])  # another event
            return list(await asyncio.gather(until_shown(ws), until_shown(colleague)))

    for first, second, after in asyncio.run(watch()):
        assert first["id"] == 7
        assert second["id"] == 8  # the resends of 7 were not shown
        assert second["seq"] == first["seq"] + 1
        assert after["type"] == "heartbeat_ack"
    assert metric("noc_events_dropped_total", reason="duplicate") - dropped_before == 2


def test_a_batchs_events_go_in_one_message_per_tenant_and_reach_the_client_one_by_one(
    daphne_server, alice
):
    """A worker sends a batch's events to each tenant's group in one channel-layer message (a
    bundle); the Daphne process hands each on as if sent alone, in order, a resent one once."""
    from channels.layers import get_channel_layer

    from apps.core.events import EVENT_BUNDLE, Event, EventType, broadcast_events, tenant_group

    token = issue_access_token(alice)
    other = alice.tenant_id + 1000  # a tenant with no client here

    def alert(alert_id: int) -> dict[str, Any]:
        return {
            "id": alert_id,
            "source_id": "panic-1",
            "severity": "LOW",
            "site": "",
            "status": "NEW",
        }

    batch = [
        Event(alice.tenant_id, EventType.ALERT_UPDATED, alert(1)),
        Event(other, EventType.ALERT_UPDATED, alert(2)),
        Event(
            alice.tenant_id,
            EventType.DEVICE_STATUS,
            {"devices": [{"device_id": "panic-1", "site": "", "status": "ONLINE"}]},
        ),
        Event(alice.tenant_id, EventType.ALERT_UPDATED, alert(3)),
    ]
    ids = ["60:0", "60:1", "60:2", "60:3"]

    async def watch() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        layer = get_channel_layer()
        raw = await layer.new_channel()
        await layer.group_add(tenant_group(alice.tenant_id), raw)
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            await until_type(ws, "snapshot")
            for _ in range(2):  # sent, then resent whole: each event is shown once
                assert await asyncio.to_thread(broadcast_events, batch, None, ids) == 4
            end = Event(alice.tenant_id, EventType.ALERT_UPDATED, alert(4))
            await asyncio.to_thread(broadcast_events, [end], None, ["61:0"])
            shown = [await next_message(ws)]
            while shown[-1].get("id") != 4:
                shown.append(await next_message(ws))
        sent = [await layer.receive(raw) for _ in range(3)]
        await layer.group_discard(tenant_group(alice.tenant_id), raw)
        return sent, shown

    sent, shown = asyncio.run(watch())
    assert [m["type"] for m in sent] == [EVENT_BUNDLE, EVENT_BUNDLE, "alert_updated"]
    assert [e["id"] for e in sent[0]["events"]] == ["60:0", "60:2", "60:3"]
    assert [(m["type"], m.get("id")) for m in shown] == [
        ("alert_updated", 1),
        ("device_status", None),
        ("alert_updated", 3),
        ("alert_updated", 4),
    ]
    assert [m["seq"] for m in shown] == list(range(shown[0]["seq"], shown[0]["seq"] + 4))


def test_events_sent_while_a_client_connects_come_after_its_snapshot_in_order(daphne_server, alice):
    """The tenant's feed hands a connecting client events from the moment it joins; those that
    come while its snapshot is read wait for it, so none goes before the snapshot or is lost."""
    import threading

    from apps.core.events import Event, EventType, broadcast_events

    token = issue_access_token(alice)
    stop = threading.Event()

    def stream() -> None:
        number = 0
        while not stop.is_set():
            data = {"id": number, "source_id": "panic-1", "site": "", "severity": "LOW"}
            broadcast_events([Event(alice.tenant_id, EventType.ALERT_UPDATED, data)])
            number += 1

    async def frames_of_one_connection() -> list[dict[str, Any]]:
        async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
            frames = [await next_message(ws) for _ in range(30)]
        return frames

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        connections = [asyncio.run(frames_of_one_connection()) for _ in range(5)]
    finally:
        stop.set()
        sender.join(10)
    for frames in connections:
        assert [f["type"] for f in frames[:2]] == ["connected", "snapshot"]
        ids = [f["id"] for f in frames[2:]]
        assert all(f["type"] == "alert_updated" for f in frames[2:])
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # none lost, none reordered


def test_a_user_is_held_to_ten_open_sockets_and_thirty_connects_a_minute(daphne_server, alice):
    token = issue_access_token(alice)
    bob_token = issue_access_token(operator(alice.tenant, "bob"))

    async def opened(token: str = token) -> ClientConnection:
        ws = await connect(url(daphne_server), additional_headers=bearer(token))
        await until_type(ws, "snapshot")  # admitted: the snapshot comes after the checks
        return ws

    async def scenario() -> tuple[int | None, int | None]:
        held = [await opened() for _ in range(10)]
        eleventh = await close_code(daphne_server, additional_headers=bearer(token))
        await held.pop().close()  # one fewer open: a new one is let in
        held.append(await opened())
        for ws in held:
            await ws.close()
        # 12 connects so far (the refused one counts); 18 more, then the 31st is refused.
        for _ in range(18):
            await (await opened()).close()
        thirty_first = await close_code(daphne_server, additional_headers=bearer(token))
        await (await opened(bob_token)).close()  # another user is not held to alice's count
        return eleventh, thirty_first

    eleventh, thirty_first = asyncio.run(scenario())
    assert eleventh == 4430
    assert thirty_first == 4429
