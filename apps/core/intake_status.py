"""MQTT intake's state in Redis: each subscriber's status, and the operator's pause flag.

A contract between processes on both sides of a layer: subscribers write their status and follow
the pause flag (apps/mqtt/subscriber.py); `manage.py drain` sets the flag, and health, metrics,
`bus_status` (apps/monitoring) and offline detection (apps/mqtt/presence.py) read both.

Key `mqtt_subscriber:status:<client_id>` is a hash that expires unless refreshed, so a dead
subscriber disappears from health by itself instead of looking connected forever.

Members of a shared group (MQTT_SHARED_GROUP) also beat in `mqtt_subscriber:members:<group>`, a
hash (client id -> Redis's clock at its last report) that does not expire: a member that died is
still known there, so a surviving one can adopt its session (apps/mqtt/adoption.py), claiming it
first in `mqtt_subscriber:adopting:<client_id>` (value: the adopter's client id) so that only one
does. `redis-cli HGETALL mqtt_subscriber:members:<group>/<lane>` lists them; `HDEL` forgets one.
Each member also keeps its last hand-offs in `mqtt_subscriber:handed_off:<client_id>` (a list,
newest first, of `[task, messages]`), which the adopter sends again: see `record_hand_off`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from apps.core import task_json

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
MEMBERS_KEY_PREFIX = "mqtt_subscriber:members:"
ADOPTING_KEY_PREFIX = "mqtt_subscriber:adopting:"
HANDED_OFF_KEY_PREFIX = "mqtt_subscriber:handed_off:"
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


# Stamped with Redis's clock, not the member's: hosts' clocks may disagree by more than the
# staleness that makes a member adoptable.
_BEAT = """
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], now[1] .. '.' .. string.format('%06d', now[2]))
"""
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def beat_member(client: redis.Redis[str], group: str, client_id: str) -> None:
    """A member of shared group `group` is alive (the subscriber, at each report)."""
    client.eval(_BEAT, 1, MEMBERS_KEY_PREFIX + group, client_id)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Silence:
    member: str  # its client id
    last_beat: float  # Redis's clock
    seconds: float


def silent_members(client: redis.Redis[str], group: str, longer_than: float) -> list[Silence]:
    """Members of `group` that have not beaten for `longer_than` seconds."""
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    beats = {member: float(at) for member, at in client.hgetall(MEMBERS_KEY_PREFIX + group).items()}
    return [
        Silence(member, at, now - at)
        for member, at in sorted(beats.items())
        if now - at > longer_than
    ]


def members(client: redis.Redis[str], group: str) -> list[str]:
    return sorted(client.hkeys(MEMBERS_KEY_PREFIX + group))


def forget_member(client: redis.Redis[str], group: str, client_id: str) -> None:
    with client.pipeline() as pipe:
        pipe.hdel(MEMBERS_KEY_PREFIX + group, client_id)
        pipe.delete(HANDED_OFF_KEY_PREFIX + client_id)
        pipe.execute()


def record_hand_off(
    client: redis.Redis[str], client_id: str, task: str, messages: list[Any], keep: int
) -> None:
    """A task a member handed on, kept with its last `keep` others. A worker takes a task from
    Redis (BRPOP) and records it as unacknowledged in a second round trip; a host that dies in
    between, or whose connection Redis still believes in when it already answered it, takes the
    task with it, recorded nowhere. So when a member dies, its adopter sends every member's last
    hand-offs again; the idempotency keys make the repeats change nothing."""
    key = HANDED_OFF_KEY_PREFIX + client_id
    with client.pipeline(transaction=False) as pipe:
        pipe.lpush(key, task_json.dumps([task, messages]))
        pipe.ltrim(key, 0, keep - 1)
        pipe.execute()


def hand_offs(client: redis.Redis[str], client_id: str) -> list[tuple[str, list[Any]]]:
    """A member's last hand-offs (`record_hand_off`), oldest first."""
    records = client.lrange(HANDED_OFF_KEY_PREFIX + client_id, 0, -1)
    return [(task, messages) for task, messages in map(task_json.loads, reversed(records))]


def claim_adoption(client: redis.Redis[str], client_id: str, adopter: str, ttl: int) -> bool:
    """Whether `adopter` may adopt `client_id`'s session: no one else does. Renews its claim."""
    key = ADOPTING_KEY_PREFIX + client_id
    return bool(client.eval(_CLAIM, 1, key, adopter, ttl))  # type: ignore[no-untyped-call]


def release_adoption(client: redis.Redis[str], client_id: str, adopter: str) -> None:
    client.eval(_RELEASE, 1, ADOPTING_KEY_PREFIX + client_id, adopter)  # type: ignore[no-untyped-call]
