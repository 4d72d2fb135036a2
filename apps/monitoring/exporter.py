"""/metrics/export/: every process's metrics on this host plus the bus state read from Redis.

Processes write their metrics into PROMETHEUS_MULTIPROC_DIR (prometheus_client multiprocess
mode); each scrape sums those files and adds gauges computed from Redis at that moment, so the
queue depths, workers and breakers shown are never older than the scrape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import redis
import structlog
from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apps.core.circuit_breaker import CLOSED, HALF_OPEN, KEY_PREFIX, OPEN
from apps.core.tasks.celery_settings import QUEUES, broker_list_keys
from apps.monitoring import metrics
from apps.monitoring.celery_hooks import PUBLISHED_AT_HEADER, read_worker_heartbeats
from apps.monitoring.tasks import read_canaries
from apps.mqtt.status import read_statuses

log = structlog.get_logger(__name__)

CIRCUIT_BREAKER_STATES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # circuit_breaker_state's values


class BusStateCollector(Collector):
    """Gauges read from Redis at scrape time: queues, workers, subscribers, circuit breakers."""

    def __init__(self, client: redis.Redis[str]) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        readable = metrics.BUS_STATE_READABLE.family()
        try:
            families = [
                *self._queue_families(),
                self._canaries(),
                self._workers(),
                self._subscribers(),
                self._circuit_breakers(),
            ]
        except redis.RedisError as exc:
            log.warning("Could not read the bus state from Redis", error=str(exc))
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        yield from families

    def _queue_families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        """Depth and oldest message age per queue, in one pipelined round trip."""
        keys = {queue.name: broker_list_keys(queue.name) for queue in QUEUES}
        with self.client.pipeline(transaction=False) as pipe:
            for key in (key for queue_keys in keys.values() for key in queue_keys):
                pipe.llen(key)
                pipe.lindex(key, -1)  # LPUSH in, BRPOP out: the tail has waited longest
            replies = iter(pipe.execute())
        depth = metrics.QUEUE_DEPTH.family()
        oldest_age = metrics.QUEUE_OLDEST_MESSAGE_AGE.family()
        now = time.time()
        for queue, queue_keys in keys.items():
            lists = [(next(replies), next(replies)) for _key in queue_keys]  # (length, tail)
            published = [_published_at(tail) for _length, tail in lists if tail is not None]
            oldest = min((at for at in published if at is not None), default=now)
            depth.add_metric([queue], sum(length for length, _tail in lists))
            oldest_age.add_metric([queue], max(0.0, now - oldest))
        return depth, oldest_age

    def _canaries(self) -> GaugeMetricFamily:
        family = metrics.QUEUE_CANARY_AGE.family()
        now = time.time()
        for queue, ran_at in read_canaries(self.client).items():
            if ran_at is not None:
                family.add_metric([queue], max(0.0, now - ran_at))
        return family

    def _workers(self) -> GaugeMetricFamily:
        family = metrics.WORKER_UP.family()
        for heartbeat in read_worker_heartbeats(self.client):
            family.add_metric([heartbeat.queue, heartbeat.hostname], int(heartbeat.up))
        return family

    def _subscribers(self) -> GaugeMetricFamily:
        family = metrics.MQTT_SUBSCRIBERS_CONNECTED.family()
        connected = [status for status in read_statuses(self.client) if status.connected]
        family.add_metric([], len(connected))
        return family

    def _circuit_breakers(self) -> GaugeMetricFamily:
        family = metrics.CIRCUIT_BREAKER_STATE.family()
        keys = sorted(self.client.scan_iter(match=KEY_PREFIX + "*", count=100))
        if not keys:
            return family
        for key, value in zip(keys, self.client.mget(keys), strict=True):
            service = key.removeprefix(KEY_PREFIX)
            state = _breaker_state(value)
            if state is None:
                log.warning("Unreadable circuit breaker record", key=key, value=value)
                continue
            family.add_metric([service], state)
        return family


def _published_at(raw_message: str) -> float | None:
    """The publish time our before_task_publish hook stamps into every task message."""
    try:
        return float(json.loads(raw_message)["headers"][PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None


def _breaker_state(value: str | None) -> int | None:
    """`{"state": "closed"|"half_open"|"open", ...}` -> 0, 1, 2."""
    try:
        return CIRCUIT_BREAKER_STATES[json.loads(value or "")["state"]]
    except (ValueError, KeyError, TypeError):
        return None


def forget_process(pid: int, directory: Path) -> None:
    """Drop the live gauges of a process that exited; its counters stay, as totals must."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def forget_dead_processes(directory: Path) -> None:
    """Drop live gauges left by processes that died without saying so (SIGKILL, a crash)."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            forget_process(int(pid), directory)


def render_metrics(client: redis.Redis[str]) -> bytes:
    directory: Path = settings.PROMETHEUS_MULTIPROC_DIR
    forget_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(BusStateCollector(client))
    return generate_latest(registry)
