"""MQTT intake's state in Redis: each subscriber's status, and the operator's pause flag.

A contract between processes on both sides of a layer: subscribers write their status and follow
the pause flag (apps/mqtt/subscriber.py); `manage.py drain` sets the flag, and health, metrics,
`bus_status` (apps/monitoring) and offline detection (apps/mqtt/presence.py) read both.

Key `mqtt_subscriber:status:<client_id>` is a hash that expires unless refreshed, so a dead
subscriber disappears from health by itself instead of looking connected forever.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

STATUS_KEY_PREFIX = "mqtt_subscriber:status:"
# Set by `manage.py drain`: subscribers hand on what they hold, then leave the broker (their
# sessions stay, so the broker keeps new messages) until `manage.py drain --resume`.
INTAKE_PAUSED_KEY = "mqtt_subscriber:intake_paused"
# Hash: device id -> when a subscriber last received (and queued) one of its messages. Offline
# detection judges silence by this, not by what the workers have processed so far.
LAST_RECEIVED_KEY = "mqtt_subscriber:last_received"
# A count, raised whenever tasks a dead worker held are put back on their queues (`manage.py
# requeue`, or kombu's restore after the visibility timeout). Kombu's workers take a task from
# its queue (BRPOP) and record it as unacknowledged in a second round trip: a worker killed in
# between held a task that is in neither place. Subscribers that see the count change hand on
# again the messages they handed on last; their idempotency keys absorb the repeats.
SEND_AGAIN_KEY = "mqtt_subscriber:send_again"
STATUS_TTL_SECONDS = 15
HEARTBEAT_INTERVAL_SECONDS = 5


@dataclass(frozen=True)
class SubscriberStatus:
    client_id: str
    connected: bool
    updated_at: float
    last_message_at: float | None
    paused: bool = False
    connected_since: float | None = None  # when its current broker connection began
    # The topic kinds its session reads (its lane); None: every kind (a subscriber of an
    # earlier release, which did not say).
    kinds: frozenset[str] | None = None

    @property
    def last_message_age(self) -> float | None:
        return None if self.last_message_at is None else time.time() - self.last_message_at


def write_status(
    client: redis.Redis[str],
    client_id: str,
    *,
    connected: bool,
    last_message_at: float | None,
    paused: bool = False,
    connected_since: float | None = None,
    kinds: list[str] | None = None,
) -> None:
    """`kinds`: the topic kinds the subscriber's session reads; None for every kind."""
    key = STATUS_KEY_PREFIX + client_id
    fields: dict[str | bytes, str] = {
        "connected": "1" if connected else "0",
        "paused": "1" if paused else "0",
        "updated_at": repr(time.time()),
        "last_message_at": "" if last_message_at is None else repr(last_message_at),
        "connected_since": "" if connected_since is None else repr(connected_since),
    }
    if kinds is not None:
        fields["kinds"] = ",".join(kinds)
    with client.pipeline() as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, STATUS_TTL_SECONDS)
        pipe.execute()


def clear_status(client: redis.Redis[str], client_id: str) -> None:
    client.delete(STATUS_KEY_PREFIX + client_id)


def read_statuses(client: redis.Redis[str]) -> list[SubscriberStatus]:
    statuses = []
    for key in client.scan_iter(match=STATUS_KEY_PREFIX + "*", count=100):
        fields = client.hgetall(key)
        if not fields:
            continue
        last = fields.get("last_message_at") or None
        since = fields.get("connected_since") or None
        kinds = fields.get("kinds")
        statuses.append(
            SubscriberStatus(
                client_id=str(key).removeprefix(STATUS_KEY_PREFIX),
                connected=fields.get("connected") == "1",
                updated_at=float(fields.get("updated_at") or 0),
                last_message_at=float(last) if last else None,
                paused=fields.get("paused") == "1",
                connected_since=float(since) if since else None,
                kinds=None if kinds is None else frozenset(kinds.split(",")),
            )
        )
    return statuses


def record_received(client: redis.Redis[str], latest: dict[str, float]) -> None:
    """Note when each device's newest message was received (the subscriber, once queued)."""
    if latest:
        client.hset(LAST_RECEIVED_KEY, mapping={k: repr(v) for k, v in latest.items()})


def last_received(client: redis.Redis[str], device_ids: list[str]) -> dict[str, float]:
    """When a subscriber last received a message of each device (absent: not recorded)."""
    if not device_ids:
        return {}
    values = client.hmget(LAST_RECEIVED_KEY, device_ids)
    return {
        device_id: float(value)
        for device_id, value in zip(device_ids, values, strict=True)
        if value is not None
    }


def pause_intake(client: redis.Redis[str]) -> None:
    client.set(INTAKE_PAUSED_KEY, repr(time.time()))


def resume_intake(client: redis.Redis[str]) -> None:
    client.delete(INTAKE_PAUSED_KEY)


def intake_paused(client: redis.Redis[str]) -> bool:
    return bool(client.exists(INTAKE_PAUSED_KEY))


def request_send_again(client: redis.Redis[str]) -> None:
    client.incr(SEND_AGAIN_KEY)


def send_again_requests(client: redis.Redis[str]) -> int:
    return int(client.get(SEND_AGAIN_KEY) or 0)
