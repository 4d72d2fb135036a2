"""/metrics/export/: every process's metrics on this host plus the bus state read from Redis.

Processes write their metrics into PROMETHEUS_MULTIPROC_DIR (prometheus_client multiprocess
mode); each scrape folds the files of dead processes into the archives (core/metric_files.py),
sums the files and adds gauges computed from Redis at that moment, so the queue depths, workers
and breakers shown are never older than the scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
import structlog
from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apps.core import metrics
from apps.core.circuit_breaker import CLOSED, HALF_OPEN, OPEN
from apps.core.intake_status import read_statuses
from apps.core.metric_files import ArchivingCollector
from apps.monitoring import bus_state

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
                *self._subscribers(),
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
        depth = metrics.QUEUE_DEPTH.family()
        oldest_age = metrics.QUEUE_OLDEST_MESSAGE_AGE.family()
        for queue in bus_state.queue_stats(self.client):
            depth.add_metric([queue.name], queue.depth)
            oldest_age.add_metric([queue.name], queue.oldest_age_s)
        return depth, oldest_age

    def _canaries(self) -> GaugeMetricFamily:
        family = metrics.QUEUE_CANARY_AGE.family()
        now = time.time()
        for queue, ran_at in bus_state.read_canaries(self.client).items():
            if ran_at is not None:
                family.add_metric([queue], max(0.0, now - ran_at))
        return family

    def _workers(self) -> GaugeMetricFamily:
        family = metrics.WORKER_UP.family()
        for heartbeat in bus_state.read_worker_heartbeats(self.client):
            family.add_metric([heartbeat.queue, heartbeat.hostname], int(heartbeat.up))
        return family

    def _subscribers(self) -> Iterator[GaugeMetricFamily]:
        statuses = read_statuses(self.client)
        family = metrics.MQTT_SUBSCRIBERS_CONNECTED.family()
        family.add_metric([], sum(1 for status in statuses if status.connected))
        yield family
        per_prefix = metrics.MQTT_PREFIX_SUBSCRIBERS.family()
        for prefix, readers in bus_state.readers_by_prefix(statuses).items():
            per_prefix.add_metric([prefix], readers)
        yield per_prefix

    def _circuit_breakers(self) -> GaugeMetricFamily:
        family = metrics.CIRCUIT_BREAKER_STATE.family()
        for service, state in bus_state.every_breaker(self.client).items():
            if state is None or state.state not in CIRCUIT_BREAKER_STATES:
                log.warning("Unreadable circuit breaker record", service=service)
                continue
            family.add_metric([service], CIRCUIT_BREAKER_STATES[state.state])
        return family


def render_metrics(client: redis.Redis[str]) -> bytes:
    registry = CollectorRegistry()
    registry.register(ArchivingCollector(settings.PROMETHEUS_MULTIPROC_DIR))
    registry.register(BusStateCollector(client))
    return generate_latest(registry)
