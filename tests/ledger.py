"""The ledger of the fault tests: every message published, every effect stored and broadcast.

A fault test publishes a fleet's messages (each with its own `msg_id`), injects its fault, and
then asks the ledger whether each message had exactly one effect: one reading stored, one
idempotency key, no dead letter, and counted exactly once in the `telemetry_update` events the
channel layer delivered to the tenants' NOC groups. A single loss or duplicate fails the test,
with the message ids named.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.factories import telemetry
from tests.services import metric, wait_for


@dataclass
class Fleet:
    """Devices over several tenants, as the field has them, and the messages they publish."""

    tenants: dict[int, list[str]] = field(default_factory=dict)  # tenant id -> device ids

    @classmethod
    def create(cls, tenants: int = 4, devices: int = 1000) -> Fleet:
        from django.db import transaction

        from apps.devices.services import register_device
        from apps.tenants.models import Tenant

        fleet = cls()
        with transaction.atomic():
            for t in range(tenants):
                tenant = Tenant.objects.create(name=f"fleet-tenant-{t}")
                ids = [f"fleet-{t}-{d:04d}" for d in range(t, devices, tenants)]
                for device_id in ids:
                    register_device(tenant, device_id, "other")
                fleet.tenants[tenant.pk] = ids
        return fleet

    @property
    def devices(self) -> list[str]:
        return [device for ids in self.tenants.values() for device in ids]

    def telemetry(self, count: int, *, prefix: str = "m") -> list[tuple[str, str]]:
        """`count` telemetry messages round-robin over the fleet, msg ids `<prefix>-<n>`."""
        devices = self.devices
        return [
            (
                f"device/{devices[n % len(devices)]}/telemetry",
                telemetry(battery=50, msg_id=f"{prefix}-{n}"),
            )
            for n in range(count)
        ]


class Broadcasts:
    """What the channel layer delivers to tenants' NOC groups, recorded as a dashboard would get
    it: a thread with its own event loop, one channel per tenant group on the real layer."""

    def __init__(self, tenant_ids: Iterable[int], redis_url: str | None = None) -> None:
        self.tenant_ids = list(tenant_ids)
        self.redis_url = redis_url
        self.received: list[tuple[int, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broadcast-ledger", daemon=True)
        self._layer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channels: dict[int, str] = {}
        self._listening: asyncio.Future[Any] | None = None
        self._error: BaseException | None = None
        self.errors: list[str] = []
        self._seen: set[str] = set()
        self.resends_absorbed = 0
        self._stopping = False
        # Times each tenant's listening was cut (the layer's Redis died under it), see _drain.
        self.interruptions: Counter[int] = Counter()

    def __enter__(self) -> Broadcasts:
        self.metrics_before = bus_counters()
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the broadcast ledger could not join the NOC groups")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        # Stopped from here, not by a message through Redis: the test may have just killed or
        # restarted the layer's Redis, and the ledger's counts were taken before this.
        self._stopping = True
        if self._loop is not None and self._listening is not None:
            self._loop.call_soon_threadsafe(self._listening.cancel)
        # A thread still inside channels_redis's cleanup after this is left to finish: it holds
        # a layer of its own (_layer_for), so it can disturb no other test's receives.
        self._thread.join(15)

    def _layer_for(self) -> Any:
        """A layer of its own, never the process's shared one: channels_redis lets one event loop
        at a time receive on a layer, and this thread's loop must not hold the layer that the
        test's own code (the health check, `asyncio.run` in a test) receives on."""
        from channels_redis.core import RedisChannelLayer
        from django.conf import settings

        config = copy.deepcopy(settings.CHANNEL_LAYERS["default"]["CONFIG"])
        if self.redis_url is not None:
            for host in config["hosts"]:
                host["address"] = f"{self.redis_url}/2"
        return RedisChannelLayer(**config)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._listen())
        except asyncio.CancelledError:
            pass  # __exit__
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        from apps.core.events import tenant_group

        self._layer = self._layer_for()
        for tenant in self.tenant_ids:
            channel = await self._layer.new_channel()
            await self._layer.group_add(tenant_group(tenant), channel)
            self._channels[tenant] = channel
        self._listening = asyncio.gather(*(self._drain(t, c) for t, c in self._channels.items()))
        self._ready.set()
        await self._listening

    async def _drain(self, tenant: int, channel: str) -> None:
        from apps.core.events import unbundle

        listening = True
        while True:
            try:
                message = await self._layer.receive(channel)
            except Exception as exc:  # the layer's Redis restarting under the test: listen on
                if self._stopping:
                    # Cancelled inside channels_redis, which can turn the cancellation into
                    # another error (an assertion in its cleanup): stop, do not listen on.
                    return
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if listening:
                    self.interruptions[tenant] += 1
                listening = False
                await asyncio.sleep(0.2)
                continue
            listening = True
            with self._lock:
                for event in unbundle(message):  # as the NOC's feed does
                    # As the NOC consumer does: an event sent again (same id) is shown once.
                    if event.get("id") in self._seen:
                        self.resends_absorbed += 1
                        continue
                    if event.get("id"):
                        self._seen.add(event["id"])
                    self.received.append((tenant, event))

    def telemetry_messages(self) -> Counter[int]:
        """Messages counted by the `telemetry_update` events so far, by tenant."""
        counts: Counter[int] = Counter()
        with self._lock:
            for tenant, message in self.received:
                if message["type"] == "telemetry_update":
                    counts[tenant] += int(message["data"]["messages"])
        return counts

    def total_telemetry_messages(self) -> int:
        return sum(self.telemetry_messages().values())

    def may_have_missed(self, tenant: int) -> int:
        """How many of `tenant`'s messages the listening may have missed: none, unless the
        layer's Redis died under it. channels_redis takes a message with BZPOPMIN; Redis killed
        after taking it (and fsyncing that) but before replying loses it, one message (one
        batch's bundle) per cut at most. The NOC is brought level then by the snapshot its
        clients get on reconnecting (apps/noc/feeds.py closes them); this ledger cannot be."""
        from django.conf import settings

        return self.interruptions[tenant] * settings.MQTT_BATCH_MAX_SIZE

    def accounts_for(self, expected: Mapping[int, int]) -> bool:
        """Every tenant's broadcasts count its stored messages, short only by what a cut of
        the layer's Redis may have taken (may_have_missed)."""
        counts = self.telemetry_messages()
        return all(
            0 <= want - counts[tenant] <= self.may_have_missed(tenant)
            for tenant, want in expected.items()
        )


def msg_id(idempotency_key: str) -> str:
    """`<timestamp>|device/<id>/telemetry#<msg_id>` -> `<msg_id>`."""
    return idempotency_key.partition("#")[2]


@dataclass(frozen=True)
class Effects:
    """What the bus did with a set of published messages, message by message (`count_effects`)."""

    published: int
    lost: list[str]  # msg ids published but never stored
    extra: list[str]  # msg ids stored that nobody published
    twice: list[str]  # msg ids stored more than once
    dead_letters: list[tuple[str, str]]  # (reason, detail), the first few
    broadcast: dict[int, int]  # messages counted by the NOC's telemetry events, by tenant
    expected_broadcast: dict[int, int]  # messages published, by tenant

    @property
    def broadcast_missing(self) -> int:
        """Messages published but never counted by a broadcast (summed over tenants)."""
        return sum(max(0, n - self.broadcast.get(t, 0)) for t, n in self.expected_broadcast.items())

    @property
    def broadcast_extra(self) -> int:
        """Messages counted by broadcasts more often than published (summed over tenants)."""
        return sum(max(0, n - self.expected_broadcast.get(t, 0)) for t, n in self.broadcast.items())

    @property
    def lost_count(self) -> int:
        """Messages without their effect: not stored, or stored but never broadcast."""
        return max(len(self.lost), self.broadcast_missing)

    @property
    def duplicate_count(self) -> int:
        """Effects beyond one per message: a second reading, or a message counted again."""
        return len(self.twice) + len(self.extra) + self.broadcast_extra


def count_effects(
    fleet: Fleet, published: list[tuple[str, str]], broadcasts: Any, *, prefix: str = ""
) -> Effects:
    """Hold each published message to its effects: one reading (by msg id), no dead letter,
    counted once by its tenant's broadcasts (`broadcasts.telemetry_messages()`, by tenant).

    With `prefix`, only readings whose msg id starts with it are looked at: the messages of one
    run among others' (bench/ publishes `<prefix>-<n>` per phase into one database)."""
    from apps.core.models import DeadLetter
    from apps.devices.models import TelemetryReading

    expected = Counter(json.loads(payload)["msg_id"] for _topic, payload in published)
    keys = TelemetryReading.objects.values_list("idempotency_key", flat=True)
    if prefix:
        keys = keys.filter(idempotency_key__contains=f"#{prefix}")
    stored = Counter(m for m in map(msg_id, keys) if m.startswith(prefix))
    per_tenant: Counter[int] = Counter()
    for tenant, devices in fleet.tenants.items():
        prefixes = tuple(f"device/{device}/" for device in devices)
        per_tenant[tenant] = sum(1 for topic, _ in published if topic.startswith(prefixes))
    return Effects(
        published=len(published),
        lost=sorted(set(expected) - set(stored)),
        extra=sorted(set(stored) - set(expected)),
        twice=sorted(m for m, n in stored.items() if n > 1),
        dead_letters=list(DeadLetter.objects.values_list("reason", "detail")[:5]),
        broadcast=dict(broadcasts.telemetry_messages()),
        expected_broadcast=dict(per_tenant),
    )


def assert_each_message_had_one_effect(
    fleet: Fleet, published: list[tuple[str, str]], broadcasts: Broadcasts
) -> None:
    """Exactly one reading, key and broadcast count per message published; no dead letters."""
    from apps.core.models import ProcessedMessage

    effects = count_effects(fleet, published, broadcasts)
    assert not effects.lost, f"{len(effects.lost)} messages lost, e.g. {effects.lost[:10]}"
    assert not effects.extra, (
        f"{len(effects.extra)} readings nobody published, e.g. {effects.extra[:10]}"
    )
    assert not effects.twice, (
        f"{len(effects.twice)} messages stored twice, e.g. {effects.twice[:10]}"
    )
    assert ProcessedMessage.objects.filter(kind="telemetry").count() == effects.published
    assert not effects.dead_letters, f"dead letters where none were due: {effects.dead_letters}"
    assert broadcasts.accounts_for(effects.expected_broadcast), (
        f"broadcast counts {effects.broadcast} != published {effects.expected_broadcast} "
        f"(by tenant; listening cut {dict(broadcasts.interruptions)} times)"
    )


def readings() -> int:
    from apps.devices.models import TelemetryReading

    return TelemetryReading.objects.count()


def broker_idle(redis_url: str) -> bool:
    """No task waits in this broker's queues or sits unacknowledged with a worker."""
    import redis

    from apps.monitoring import bus_state

    client = redis.Redis.from_url(f"{redis_url}/0", decode_responses=True)
    waiting = sum(queue.depth for queue in bus_state.queue_stats(client))
    return waiting == 0 and bus_state.unacked_count(client) == 0


def send_task(redis_url: str, name: str) -> None:
    from intelliwiz_config.celery import app

    with app.connection_for_write(f"{redis_url}/0") as connection:
        app.send_task(name, connection=connection)


def settle_and_check(
    fleet: Fleet,
    published: list[tuple[str, str]],
    broadcasts: Broadcasts,
    redis_url: str,
    *,
    fault: str,
    timeout: float = 240,
) -> None:
    """Wait until the bus has done all it will, then hold each message to one effect.

    With FAULT_FIGURES set to a file, appends the run's figures to it (one JSON line a test).
    """
    from apps.core.models import PendingBroadcast
    from apps.core.tasks.celery_settings import RESEND_BROADCASTS

    total = len(published)
    try:
        wait_for(lambda: readings() >= total, timeout=timeout, interval=0.5, what="")
    except TimeoutError:
        raise AssertionError(where_are_they(published, redis_url, timeout)) from None
    wait_for(lambda: broker_idle(redis_url), timeout=60, interval=0.2, what="the queues to drain")

    # Events a worker committed but could not send (it died, Redis was down) are resent by the
    # resend task, which beat runs every 15 s: run it until no event is left unconfirmed.
    def everything_sent() -> bool:
        if not PendingBroadcast.objects.exists():
            return True
        send_task(redis_url, RESEND_BROADCASTS)
        return False

    wait_for(everything_sent, timeout=60, interval=1, what="every NOC event sent or resent")
    expected = count_effects(fleet, published, broadcasts).expected_broadcast
    try:
        wait_for(lambda: broadcasts.accounts_for(expected), timeout=30)
    except TimeoutError:
        raise AssertionError(
            f"broadcasts count {dict(broadcasts.telemetry_messages())} messages by tenant, "
            f"{expected} were stored; listener errors: {broadcasts.errors}"
        ) from None
    wait_for(lambda: broker_idle(redis_url), timeout=30, what="the resend tasks to finish")
    assert_each_message_had_one_effect(fleet, published, broadcasts)
    if os.environ.get("FAULT_FIGURES"):
        after = bus_counters()
        figures = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "fault": fault,
            "devices": len(fleet.devices),
            "tenants": len(fleet.tenants),
            "sent": total,
            "stored": readings(),
            "broadcast": broadcasts.total_telemetry_messages(),
            "lost": 0,
            "duplicated": 0,
            "event_resends_absorbed_by_id": broadcasts.resends_absorbed,
            "broadcast_missed_in_layer_cuts": total - broadcasts.total_telemetry_messages(),
            **{name: after[name] - broadcasts.metrics_before[name] for name in after},
        }
        with open(os.environ["FAULT_FIGURES"], "a") as out:
            out.write(json.dumps(figures) + "\n")


def where_are_they(published: list[tuple[str, str]], redis_url: str, waited: float) -> str:
    """What a test that timed out waiting for readings needs to say: which messages are
    missing, and whether the bus still holds any work (queued, unacknowledged) or none."""
    import redis

    from apps.core.models import DeadLetter, ProcessedMessage
    from apps.devices.models import TelemetryReading
    from apps.monitoring import bus_state

    expected = {json.loads(payload)["msg_id"] for _topic, payload in published}
    stored = {
        msg_id(key) for key in TelemetryReading.objects.values_list("idempotency_key", flat=True)
    }
    missing = sorted(expected - stored, key=lambda m: int(m.rpartition("-")[2] or 0))
    claimed = ProcessedMessage.objects.filter(kind="telemetry").count()
    try:
        client = redis.Redis.from_url(f"{redis_url}/0", decode_responses=True)
        queued = {q.name: q.depth for q in bus_state.queue_stats(client) if q.depth}
        unacked: object = bus_state.unacked_by_queue(client)
        received = metric("mqtt_messages_received_total", prefix="device/")
    except Exception as exc:
        queued, unacked, received = {}, f"unknown ({exc!r})", float("nan")
    return (
        f"after {waited:.0f} s, {len(stored)} of {len(expected)} messages stored; "
        f"{len(missing)} missing, e.g. {missing[:5]} ... {missing[-5:]}; "
        f"{claimed} telemetry keys claimed, {DeadLetter.objects.count()} dead letters; "
        f"the broker holds queued {queued or 'none'}, unacknowledged {unacked or 'none'}; "
        f"subscribers received {received:.0f} device messages in all (redeliveries included)"
    )


def bus_counters() -> dict[str, float]:
    """Counters that show the faults' work: receipts (redeliveries included), redeliveries the
    ledger absorbed, events the outbox resent."""
    return {
        "received_by_subscribers": metric("mqtt_messages_received_total", prefix="device/"),
        "redeliveries_absorbed": metric("bus_messages_duplicate_total", kind="telemetry"),
        "events_resent": metric("bus_broadcasts_resent_total"),
    }
