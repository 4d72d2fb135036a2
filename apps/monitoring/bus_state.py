"""The bus as Redis sees it right now: queues, unacknowledged tasks, circuit breakers.

Read by /metrics/export/ at scrape time and by the operator commands (`bus_status`, `drain`),
so both always agree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from kombu.transport.redis import Channel as RedisChannel

from apps.core.circuit_breaker import KEY_PREFIX as BREAKER_KEY_PREFIX
from apps.core.circuit_breaker import BreakerState
from apps.core.tasks.celery_settings import QUEUES, broker_list_keys
from apps.monitoring.celery_hooks import PUBLISHED_AT_HEADER

# Where kombu's Redis transport keeps delivered-but-unacknowledged messages.
UNACKED_KEY: str = RedisChannel.unacked_key


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
    """The publish time our before_task_publish hook stamps into every task message."""
    try:
        return float(json.loads(raw_message)["headers"][PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None


def breakers(client: redis.Redis[str]) -> dict[str, BreakerState | None]:
    """Every circuit breaker by service; None for a record that cannot be read."""
    keys = sorted(client.scan_iter(match=BREAKER_KEY_PREFIX + "*", count=100))
    result: dict[str, BreakerState | None] = {}
    for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
        try:
            result[key.removeprefix(BREAKER_KEY_PREFIX)] = BreakerState(**json.loads(value or ""))
        except (ValueError, TypeError):
            result[key.removeprefix(BREAKER_KEY_PREFIX)] = None
    return result
