"""The bus as Redis sees it right now: every reader of its state, for health, metrics and operators.

Queues and unacknowledged tasks (kombu's keys), circuit breakers, worker heartbeats and queue
canaries are read here and nowhere else, so /metrics/export/, /monitoring/health/ and the
operator commands (`bus_status`, `drain`, `requeue`) always agree. The subscribers' records are
a contract with the subscriber itself and live in apps/core/intake_status.py.

Each key is named where it is written, all in the broker database (DB 0):
`worker_heartbeat:<queue>:<node>` (celery_hooks), `health:canary:<queue>` (tasks.py),
`circuit_breaker:<service>` (apps/core/circuit_breaker.py), `mqtt_subscriber:*` (status, pause
flag, last received per device: apps/core/intake_status.py), `task_deliveries:<id>:<retry>`
(apps/core/tasks/base.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from kombu.transport.redis import Channel as RedisChannel

from apps.core import circuit_breaker
from apps.core.intake_status import SubscriberStatus
from apps.core.tasks.celery_settings import QUEUES, broker_list_keys
from apps.monitoring.celery_hooks import (
    HEARTBEAT_KEY_PREFIX,
    HEARTBEAT_STALE_AFTER_SECONDS,
    HEARTBEAT_STOPPED,
    PUBLISHED_AT_HEADER,
)
from apps.monitoring.tasks import canary_key
from apps.mqtt.topics import TOPIC_KINDS

# Where kombu's Redis transport keeps delivered-but-unacknowledged messages.
UNACKED_KEY: str = RedisChannel.unacked_key


# --- Queues --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    name: str
    depth: int
    oldest_age_s: float  # 0 when empty


def queue_stats(client: redis.Redis[str]) -> list[QueueStats]:
    """Depth and oldest message age per queue, in one pipelined round trip."""
    keys = {queue.name: broker_list_keys(queue.name) for queue in QUEUES}
    with client.pipeline(transaction=False) as pipe:
        for key in (key for queue_keys in keys.values() for key in queue_keys):
            pipe.llen(key)
            pipe.lindex(key, -1)  # LPUSH in, BRPOP out: the tail has waited longest
        replies = iter(pipe.execute())
    now = time.time()
    stats = []
    for queue, queue_keys in keys.items():
        lists = [(int(next(replies)), next(replies)) for _key in queue_keys]  # (length, tail)
        published = [published_at(tail) for _length, tail in lists if tail is not None]
        oldest = min((at for at in published if at is not None), default=now)
        depth = sum(length for length, _tail in lists)
        stats.append(QueueStats(queue, depth, max(0.0, now - oldest) if depth else 0.0))
    return stats


def unacked_count(client: redis.Redis[str]) -> int:
    """Tasks handed to a worker and not yet acknowledged (running, prefetched or orphaned)."""
    return int(client.hlen(UNACKED_KEY))


def unacked_by_queue(client: redis.Redis[str]) -> dict[str, int]:
    """The same, per queue (each entry is kombu's `[message, exchange, routing_key]`)."""
    counts: dict[str, int] = {}
    for raw in client.hvals(UNACKED_KEY):
        try:
            queue = str(json.loads(raw)[2])
        except (ValueError, IndexError, TypeError):
            queue = "unknown"
        counts[queue] = counts.get(queue, 0) + 1
    return counts


def published_at(raw_message: str) -> float | None:
    """The publish time celery_hooks stamps into every task message, if it carries one."""
    try:
        return float(json.loads(raw_message)["headers"][PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None


# --- Circuit breakers ----------------------------------------------------------------------


def breakers(client: redis.Redis[str]) -> dict[str, circuit_breaker.BreakerState | None]:
    """Every circuit breaker by service; None for a record that cannot be read."""
    prefix = circuit_breaker.KEY_PREFIX
    keys = sorted(client.scan_iter(match=prefix + "*", count=100))
    result: dict[str, circuit_breaker.BreakerState | None] = {}
    for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        try:
            result[key.removeprefix(prefix)] = circuit_breaker.decode(value or "")
        except ValueError:
            result[key.removeprefix(prefix)] = None
    return result


def every_breaker(client: redis.Redis[str]) -> dict[str, circuit_breaker.BreakerState | None]:
    """The breakers the code declares (closed while they have no record) and every breaker
    with a record, by service."""
    recorded = breakers(client)
    return {
        service: recorded[service] if service in recorded else circuit_breaker.BreakerState()
        for service in sorted({*circuit_breaker.SERVICES, *recorded})
    }


# --- Worker heartbeats ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerHeartbeat:
    queue: str
    hostname: str
    seen_at: float  # the last heartbeat, or when it stopped; 0.0: stopped at an unknown time
    stopped: bool = False  # cleanly: it said so as it stopped consuming

    @property
    def up(self) -> bool:
        return not self.stopped and time.time() - self.seen_at < HEARTBEAT_STALE_AFTER_SECONDS

    @classmethod
    def decode(cls, queue: str, hostname: str, value: str) -> WorkerHeartbeat:
        if value.startswith(HEARTBEAT_STOPPED):
            return cls(queue, hostname, float(value.removeprefix(HEARTBEAT_STOPPED)), True)
        seen_at = float(value)
        # 0: what workers wrote on a clean stop before they wrote the time with it.
        return cls(queue, hostname, seen_at, stopped=seen_at == 0)


def read_worker_heartbeats(client: redis.Redis[str]) -> list[WorkerHeartbeat]:
    keys = list(client.scan_iter(match=HEARTBEAT_KEY_PREFIX + "*", count=100))
    if not keys:
        return []
    heartbeats = []
    for key, value in zip(keys, client.mget(keys), strict=True):
        if value is None:  # expired between SCAN and MGET
            continue
        queue, _, hostname = key.removeprefix(HEARTBEAT_KEY_PREFIX).partition(":")
        heartbeats.append(WorkerHeartbeat.decode(queue, hostname, value))
    return heartbeats


# --- Queue canaries ------------------------------------------------------------------------


def read_canaries(client: redis.Redis[str]) -> dict[str, float | None]:
    """When each queue's latest canary ran (None: never), from one MGET."""
    values = client.mget([canary_key(queue.name) for queue in QUEUES])
    return {
        queue.name: None if value is None else float(value)
        for queue, value in zip(QUEUES, values, strict=True)
    }


# --- Subscribers ---------------------------------------------------------------------------


def readers_by_prefix(statuses: list[SubscriberStatus]) -> dict[str, int]:
    """How many connected subscribers read each topic prefix. With lanes (`mqtt_subscriber
    --lane urgent|routine`) a prefix can go unread while another lane is connected: alerts wait
    in the broker though "a subscriber is connected"."""
    readers = {kind.prefix: 0 for kind in TOPIC_KINDS}
    for status in statuses:
        if not status.connected:
            continue
        read = {k.prefix for k in TOPIC_KINDS if status.kinds is None or k.name in status.kinds}
        for prefix in read:
            readers[prefix] += 1
    return readers
