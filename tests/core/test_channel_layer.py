"""The channel layer's `group_send_many`: what `group_send` does for each group, sent together."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from apps.core.channel_layer import BatchingRedisChannelLayer
from tests.environment import free_port, redis_url
from tests.services import metric, start_redis

RECEIVE_TIMEOUT = 5.0


def layer(**overrides: Any) -> BatchingRedisChannelLayer:
    config = copy.deepcopy(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    return BatchingRedisChannelLayer(**{**config, **overrides})


def channel_redis() -> redis.Redis[bytes]:
    return redis.Redis.from_url(settings.CHANNELS_REDIS_URL)


async def receive(layer: RedisChannelLayer, channel: str, count: int) -> list[Any]:
    return [await asyncio.wait_for(layer.receive(channel), RECEIVE_TIMEOUT) for _ in range(count)]


def test_each_group_s_members_get_its_message_once_whichever_process_holds_them(redis_client):
    """A Daphne process keeps all its clients' channels under one Redis key, so one call may put
    several groups' messages on one key; each client gets its own group's message only."""
    sender, process_a, process_b = layer(), layer(), layer()

    def client(process: BatchingRedisChannelLayer, name: str) -> str:
        return f"specific.{process.client_prefix}!{name}"

    a1, a2, a3 = (client(process_a, name) for name in ("one", "two", "three"))
    b1 = client(process_b, "one")
    members = {
        "noc.tenant.1": [a1, a2, "plain.one"],
        "noc.tenant.2": [a3, b1],
        "noc.tenant.3": [],
    }
    reader = {a1: process_a, a2: process_a, a3: process_a, b1: process_b, "plain.one": sender}

    async def scenario() -> dict[str, list[Any]]:
        for group, channels in members.items():
            for channel in channels:
                await sender.group_add(group, channel)
        await sender.group_send_many(
            [(group, {"type": "telemetry_update", "data": group}) for group in members]
        )
        got = {}
        for channel, process in reader.items():
            got[channel] = [m["data"] for m in await receive(process, channel, 1)]
        for process in (process_a, process_b, sender):  # the backups' clean-up, in flight
            await asyncio.gather(*process.receive_cleaners)
        return got

    assert asyncio.run(scenario()) == {
        a1: ["noc.tenant.1"],
        a2: ["noc.tenant.1"],
        "plain.one": ["noc.tenant.1"],
        a3: ["noc.tenant.2"],
        b1: ["noc.tenant.2"],
    }
    # Nothing else was sent: no message left over in a process's buffer, nor in Redis.
    for process in (process_a, process_b):
        leftover = {c: q.qsize() for c, q in process.receive_buffer.items() if q.qsize()}
        assert leftover == {}
    assert list(channel_redis().scan_iter(f"{sender.prefix}specific.*")) == []
    assert channel_redis().zcard(f"{sender.prefix}plain.one") == 0


def test_one_process_gets_the_messages_of_one_call_and_of_the_next_in_the_order_sent(
    redis_client,
):
    """Messages added in one script share its moment; a tie on the score would pop them in the
    order of their (encrypted, random) bytes instead."""
    the_layer = layer()
    groups = [f"noc.tenant.{n}" for n in range(1, 21)]

    async def scenario() -> list[int]:
        for number, group in enumerate(groups):
            await the_layer.group_add(group, f"specific.p!client{number}")
        await the_layer.group_send_many(
            [(group, {"type": "t", "n": n}) for n, group in enumerate(groups)]
        )
        await the_layer.group_send_many([(groups[0], {"type": "t", "n": 20})])
        # Every message lands on the process's one key: read it as Daphne's receive loop does.
        order = []
        for _ in range(21):
            _, message = await asyncio.wait_for(
                the_layer.receive_single("specific.p!"), RECEIVE_TIMEOUT
            )
            order.append(message["n"])
        return order

    assert asyncio.run(scenario()) == list(range(21))


def test_a_full_channel_drops_the_message_counts_it_and_the_others_still_get_theirs(
    redis_client,
):
    dropped_before = metric("noc_events_dropped_total", reason="channel_full")
    the_layer = layer(capacity=2)

    async def scenario() -> tuple[list[Any], list[Any]]:
        await the_layer.group_add("noc.tenant.1", "slow.client")
        await the_layer.group_add("noc.tenant.2", "quick.client")
        quick = []
        for n in range(3):
            await the_layer.group_send_many(
                [("noc.tenant.1", {"type": "t", "n": n}), ("noc.tenant.2", {"type": "t", "n": n})]
            )
            quick += await receive(the_layer, "quick.client", 1)
        return await receive(the_layer, "slow.client", 2), quick

    slow, quick = asyncio.run(scenario())
    assert [m["n"] for m in slow] == [0, 1]  # its capacity; the third was dropped
    assert [m["n"] for m in quick] == [0, 1, 2]
    assert channel_redis().zcard(f"{the_layer.prefix}slow.client") == 0
    dropped = metric("noc_events_dropped_total", reason="channel_full")
    assert dropped - dropped_before == 1


def test_a_process_s_full_key_drops_within_one_call_and_the_log_names_the_group_dropped(
    redis_client, caplog: pytest.LogCaptureFixture
):
    """A Daphne process's clients share one key: its capacity is reached within one call, and
    only the group whose message found it full is named."""
    dropped_before = metric("noc_events_dropped_total", reason="channel_full")
    the_layer = layer(capacity=2)
    groups = ["noc.tenant.1", "noc.tenant.2", "noc.tenant.3"]

    async def scenario() -> list[str]:
        for number, group in enumerate(groups):
            await the_layer.group_add(group, f"specific.full!client{number}")
        await the_layer.group_add("noc.tenant.3", "elsewhere.client")
        await the_layer.group_send_many([(group, {"type": "t", "g": group}) for group in groups])
        got = []
        for _ in range(2):
            _, message = await asyncio.wait_for(
                the_layer.receive_single("specific.full!"), RECEIVE_TIMEOUT
            )
            got.append(message["g"])
        got += [m["g"] for m in await receive(the_layer, "elsewhere.client", 1)]
        return got

    with caplog.at_level(logging.INFO, logger="channels_redis.core"):
        assert asyncio.run(scenario()) == ["noc.tenant.1", "noc.tenant.2", "noc.tenant.3"]
    drops = [r.getMessage() for r in caplog.records if "over capacity" in r.getMessage()]
    assert drops == ["1 of 2 channels over capacity in group noc.tenant.3"]
    dropped = metric("noc_events_dropped_total", reason="channel_full")
    assert dropped - dropped_before == 1


def test_a_lapsed_member_is_dropped_from_its_group_and_sent_nothing(redis_client):
    the_layer = layer()

    async def scenario() -> None:
        await the_layer.group_add("noc.tenant.1", "gone.client")
        await the_layer.group_add("noc.tenant.1", "live.client")
        # Its membership last renewed longer ago than CHANNELS_GROUP_EXPIRY.
        channel_redis().zadd(the_layer._group_key("noc.tenant.1"), {"gone.client": 1})
        await the_layer.group_send_many([("noc.tenant.1", {"type": "t"})])
        assert await receive(the_layer, "live.client", 1) == [{"type": "t"}]

    asyncio.run(scenario())
    assert channel_redis().zrange(the_layer._group_key("noc.tenant.1"), 0, -1) == [b"live.client"]
    assert not channel_redis().exists(f"{the_layer.prefix}gone.client")


def test_ready_messages_are_taken_without_a_blocking_wait_in_order_leaving_nothing_behind(
    tmp_path: Path,
):
    """Each ready message is taken by one script, never the layer's blocking BZPOPMIN: in the
    order sent, each once. On a Redis of its own, whose command counts are this test's only."""
    port = free_port()
    server = start_redis(port, tmp_path / "redis")
    try:
        process = layer(hosts=[redis_url(port)])
        channels = [f"specific.{process.client_prefix}!{name}" for name in ("one", "two")]

        async def scenario() -> list[tuple[int, int]]:
            for n in range(6):
                await process.send(channels[n % 2], {"type": "t", "n": n})
            got = []
            for n in range(6):
                message = await asyncio.wait_for(process.receive(channels[n % 2]), RECEIVE_TIMEOUT)
                got.append((channels.index(channels[n % 2]), message["n"]))
            await asyncio.gather(*process.receive_cleaners)  # the backups' clean-up, in flight
            return got

        assert asyncio.run(scenario()) == [(n % 2, n) for n in range(6)]
        own = redis.Redis.from_url(redis_url(port))
        calls = {name: stats["calls"] for name, stats in own.info("commandstats").items()}
        assert "cmdstat_bzpopmin" not in calls
        assert calls["cmdstat_evalsha"] + calls.get("cmdstat_eval", 0) >= 6
        key = f"{process.prefix}specific.{process.client_prefix}!"
        assert own.zcard(key) == 0
        assert own.zcard(f"{key}$inflight") == 0
        own.close()
    finally:
        server.stop()


def test_a_message_left_in_the_backup_by_a_cancelled_receive_is_received_first(redis_client):
    process = layer()
    channel = f"specific.{process.client_prefix}!one"
    key = f"{process.prefix}specific.{process.client_prefix}!"

    async def scenario() -> list[int]:
        await process.send(channel, {"type": "t", "n": 1})
        await process.send(channel, {"type": "t", "n": 2})
        # A receive cancelled after taking message 1 leaves it in the backup, not the channel.
        [(member, score)] = channel_redis().zpopmin(key)
        channel_redis().zadd(f"{key}$inflight", {member: score})
        got = [await asyncio.wait_for(process.receive(channel), RECEIVE_TIMEOUT) for _ in "12"]
        return [message["n"] for message in got]

    assert asyncio.run(scenario()) == [1, 2]


def test_a_receive_on_an_empty_channel_waits_for_the_next_message(redis_client):
    process = layer()
    channel = f"specific.{process.client_prefix}!one"

    def waiting_in_redis() -> int:  # other processes of the test run may wait there too
        return sum(1 for client in channel_redis().client_list() if client["cmd"] == "bzpopmin")

    async def scenario() -> dict[str, Any]:
        others = waiting_in_redis()
        waiting = asyncio.ensure_future(process.receive(channel))
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while waiting_in_redis() == others:  # in the layer's blocking wait (BZPOPMIN)
            assert time.monotonic() < deadline, "the receive never waited in Redis"
            await asyncio.sleep(0.01)
        await process.send(channel, {"type": "t", "n": 7})
        return await asyncio.wait_for(waiting, RECEIVE_TIMEOUT)

    assert asyncio.run(scenario()) == {"type": "t", "n": 7}


def test_events_reach_each_tenant_s_group_through_a_layer_without_group_send_many(redis_client):
    """Another CHANNEL_LAYERS backend (channels_redis's own here) gets a `group_send` each."""
    from channels.layers import get_channel_layer
    from django.test import override_settings

    from apps.core.events import Event, EventType, broadcast_events, tenant_group, unbundle

    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["BACKEND"] = "channels_redis.core.RedisChannelLayer"
    events = [
        Event(1, EventType.DEVICE_STATUS, {"n": 1}),
        Event(2, EventType.DEVICE_STATUS, {"n": 2}),
        Event(1, EventType.TELEMETRY_UPDATE, {"n": 3}),
    ]

    async def scenario(stock: Any) -> dict[int, list[int]]:
        for tenant in (1, 2):
            await stock.group_add(tenant_group(tenant), f"fallback.tenant{tenant}")
        assert await asyncio.to_thread(broadcast_events, events) == 3
        got = {}
        for tenant in (1, 2):
            (message,) = await receive(stock, f"fallback.tenant{tenant}", 1)
            got[tenant] = [event["data"]["n"] for event in unbundle(message)]
        return got

    with override_settings(CHANNEL_LAYERS=layers):
        stock = get_channel_layer()
        assert not hasattr(stock, "group_send_many")
        assert asyncio.run(scenario(stock)) == {1: [1, 3], 2: [2]}
