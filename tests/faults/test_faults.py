"""Faults under load, judged by the ledger (tests/ledger.py): each message one effect, or fail.

Every test runs a fleet of 1,000 devices over four tenants through real processes — Mosquitto,
the subscriber, Redis, Celery workers, SQLite, the channel layer — injects its fault with a real
signal or lock while messages flow, and then checks that each message published was stored
once, keyed once, dead-lettered never and broadcast to its tenant's NOC group exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from apps.core.tasks.celery_settings import worker_argv
from tests import environment
from tests.database import hold_the_writer, slow_telemetry_inserts
from tests.environment import free_port
from tests.ledger import Broadcasts, Fleet, readings, settle_and_check
from tests.services import (
    Service,
    descendants,
    metric,
    mqtt_publish,
    publish_until_acknowledged,
    start_mosquitto,
    start_redis,
    wait_for,
)

PORT = environment.MQTT_PORT
pytestmark = pytest.mark.faults  # `make test-faults`; CI runs it after `make test`


class Publisher(threading.Thread):
    """Publishes in the background while the test injects its fault; re-raises its error."""

    def __init__(self, publish: Callable[[], object]) -> None:
        super().__init__(name="fault-publisher", daemon=True)
        self._publish = publish
        self.error: BaseException | None = None
        self.result: object = None

    def run(self) -> None:
        try:
            self.result = self._publish()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 240) -> object:
        self.join(timeout)
        assert not self.is_alive(), "the publisher did not finish"
        if self.error:
            raise self.error
        return self.result


@pytest.fixture
def fleet(transactional_db: None) -> Fleet:
    return Fleet.create(tenants=4, devices=1000)


class OwnRedis:
    """A Redis of the test's own with its append-only file fsynced before each reply, so what
    it acknowledged survives a SIGKILL; it can be killed and started again on the same data.

    (With the shipped `appendfsync everysec`, Redis may answer writes up to about two seconds
    before they reach the file when the disk is slow: docs/reliability.md, "Durability".)
    """

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.url = environment.redis_url(self.port)
        self.data = data
        self.service = self._start()

    def _start(self) -> Service:
        return start_redis(self.port, self.data, appendonly=True, appendfsync="always")

    def restart(self) -> None:
        self.service = self._start()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    yield server
    server.service.stop()


def own_worker(name: str, redis_url: str, log: Path, **env: str) -> Service:
    """A `general` worker on the test's own Redis, started as `make run` starts one."""
    argv = worker_argv("general")
    argv[argv.index("--hostname") + 1] = f"{name}-{os.getpid()}@%h"
    return Service(
        name,
        [sys.executable, "-m", *argv],
        log,
        env={**os.environ, "REDIS_URL": redis_url, "LOG_LEVEL": "INFO", **env},
    )


def test_10000_qos1_messages_through_two_subscriber_kills_have_one_effect_each(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    fleet: Fleet,
):
    published = fleet.telemetry(10_000)
    received_before = _receipts()

    def publish_along_with_intake() -> None:
        # Kept at most 1,000 ahead of what subscribers received, so messages are still
        # arriving, and held in a batch, when each kill comes.
        for start in range(0, len(published), 250):
            wait_for(
                lambda start=start: _receipts() - received_before >= start - 1_000,
                timeout=120,
                what="the subscriber to keep up",
            )
            mqtt_publish(PORT, published[start : start + 250])

    with Broadcasts(fleet.tenants) as broadcasts:
        # Batches held half a second, and each kill when the subscriber holds messages it has
        # counted and not handed on: a subscriber that keeps up hands on a full batch the turn
        # it fills, so a kill right after such a turn would find none in hand.
        subscriber = start_subscriber(MQTT_BATCH_INTERVAL_MS="500")
        publisher = Publisher(publish_along_with_intake)
        publisher.start()
        for threshold in (2_000, 5_000):
            wait_for(
                lambda threshold=threshold, pid=subscriber.process.pid: (
                    _receipts() - received_before >= threshold and _in_hand(pid) > 0
                ),
                timeout=120,
                interval=0.005,
                what=f"{threshold} messages received, some not yet handed on, before the kill",
            )
            subscriber.signal(signal.SIGKILL)
            subscriber.process.wait(10)
            assert readings() < len(published), "the kill came after the last message"
            subscriber = start_subscriber(MQTT_BATCH_INTERVAL_MS="500")
        publisher.finish()
        settle_and_check(
            fleet, published, broadcasts, os.environ["REDIS_URL"], fault="subscriber SIGKILL x2"
        )
    # The kills interrupted messages in hand: the broker delivered those again.
    assert _receipts() - received_before > len(published)


def _receipts() -> float:
    return metric("mqtt_messages_received_total", prefix="device/")


def _in_hand(pid: int) -> float:
    """Device messages the subscriber process `pid` has counted as received and not yet
    handed on to Celery (nor refused), by its own counters: those the next process is sent
    again after a kill, and counts again."""
    from apps.core.metric_files import recorded

    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    counts: dict[str, float] = {}
    for family in recorded(directory, f"counter_{pid}.db"):
        for sample in family.samples:
            if sample.name == "mqtt_messages_received_total":
                if sample.labels.get("prefix") != "device/":
                    continue
            elif sample.name not in (
                "mqtt_messages_enqueued_total",
                "mqtt_messages_rejected_total",
            ):
                continue
            counts[sample.name] = counts.get(sample.name, 0.0) + sample.value
    handed = counts.get("mqtt_messages_enqueued_total", 0.0)
    return (
        counts.get("mqtt_messages_received_total", 0.0)
        - handed
        - counts.get("mqtt_messages_rejected_total", 0.0)
    )


def test_a_worker_main_process_killed_with_prefetched_tasks_loses_and_repeats_nothing(
    own_redis: OwnRedis,
    start_subscriber: Callable[..., Service],
    fleet: Fleet,
    tmp_path: Path,
):

    from apps.monitoring import bus_state

    redis_url = own_redis.url
    published = fleet.telemetry(3_000)
    # Each reading takes a few milliseconds to insert: batches are running and others are
    # prefetched (unacknowledged, held by the worker) when its main process is killed.
    slow = slow_telemetry_inserts("slow_50", "NEW.battery = 50", steps=5_000)
    slow.__enter__()
    victim = own_worker("victim", redis_url, tmp_path / "victim.log")
    successor: Service | None = None
    admin = redis.Redis.from_url(f"{redis_url}/0", decode_responses=True)
    try:
        with Broadcasts(fleet.tenants, redis_url) as broadcasts:
            start_subscriber(REDIS_URL=redis_url, MQTT_BATCH_SIZE="50")
            mqtt_publish(PORT, published)
            wait_for(
                lambda: readings() > 0 and bus_state.unacked_count(admin) >= 3,
                timeout=60,
                interval=0.02,
                what="batches running and prefetched by the worker",
            )
            held = bus_state.unacked_count(admin)
            victim.signal(signal.SIGKILL)  # the main process only: its pool is orphaned
            victim.process.wait(10)
            assert readings() < len(published)
            # The orphaned pool processes finish what they run, or die; then what the dead
            # worker held is still unacknowledged in Redis.
            wait_for(
                lambda: not descendants(victim.pid) and not _orphans(victim.pid),
                timeout=60,
                what="the killed worker's pool processes to end",
            )
            assert bus_state.unacked_count(admin) >= 1, f"held {held}, none left unacked"

            successor = own_worker("successor", redis_url, tmp_path / "successor.log")
            # The runbook's recovery: requeue at once rather than after the visibility timeout.
            env = {**os.environ, "REDIS_URL": redis_url}
            subprocess.run(
                [sys.executable, "manage.py", "requeue", "--force"],
                env=env,
                check=True,
                capture_output=True,
                timeout=60,
            )
            settle_and_check(
                fleet, published, broadcasts, redis_url, fault="worker main process SIGKILL"
            )
    finally:
        victim.stop()
        if successor is not None:
            successor.stop()
        slow.__exit__(None, None, None)


def _orphans(parent_pid: int) -> list[Any]:
    """Processes that were the killed worker's pool (re-parented, same command line)."""
    import psutil

    found = []
    for process in psutil.process_iter(["ppid", "cmdline", "pid"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "victim-" in cmdline and process.info["pid"] != parent_pid:
            found.append(process)
    return found


def test_redis_killed_and_restarted_under_load_loses_no_acknowledged_message(
    own_redis: OwnRedis,
    start_subscriber: Callable[..., Service],
    fleet: Fleet,
    tmp_path: Path,
):
    published = fleet.telemetry(10_000)
    before, during = published[:6_000], published[6_000:]
    worker = own_worker("redis-fault", own_redis.url, tmp_path / "worker.log")
    try:
        with Broadcasts(fleet.tenants, own_redis.url) as broadcasts:
            subscriber = start_subscriber(REDIS_URL=own_redis.url)
            publisher = Publisher(lambda: mqtt_publish(PORT, before, timeout=180))
            publisher.start()
            wait_for(lambda: readings() >= 3_000, timeout=120, interval=0.02, what="3,000 in")
            own_redis.service.signal(signal.SIGKILL)
            own_redis.service.process.wait(10)
            publisher.finish()
            mqtt_publish(PORT, during)  # the broker takes them; the subscriber cannot hand on
            wait_for(
                lambda: "holding them unacknowledged" in subscriber.log(),
                timeout=30,
                what="the subscriber to hold messages while Redis is down",
            )
            stalled = readings()
            own_redis.restart()
            back = time.monotonic()
            # Both reconnect by themselves: the subscriber hands on again, the worker consumes.
            wait_for(
                lambda: "message hand-off recovered" in subscriber.log(),
                timeout=30,
                what="the subscriber to hand on again within 30 s",
            )
            wait_for(
                lambda: readings() > stalled + 100,
                timeout=30,
                what="the worker to consume again within 30 s",
            )
            assert time.monotonic() - back < 30
            settle_and_check(
                fleet, published, broadcasts, own_redis.url, fault="Redis SIGKILL + AOF restart"
            )
    finally:
        worker.stop()


def test_mosquitto_restarted_under_load_loses_no_qos1_message(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    fleet: Fleet,
    tmp_path: Path,
):
    port = free_port()
    data = tmp_path / "mosquitto"
    broker = start_mosquitto(port, data)
    published = fleet.telemetry(10_000)
    try:
        with Broadcasts(fleet.tenants) as broadcasts:
            subscriber = start_subscriber(MQTT_PORT=str(port), MQTT_RECONNECT_MAX_DELAY="2")
            publisher = Publisher(lambda: publish_until_acknowledged(port, published, chunk=500))
            publisher.start()
            wait_for(lambda: readings() >= 3_000, timeout=120, interval=0.02, what="3,000 in")
            broker.stop()  # SIGTERM: Mosquitto saves its persistence file, as on a restart
            assert readings() < len(published), "the restart came after the last message"
            broker = start_mosquitto(port, data)
            wait_for(
                lambda: subscriber.log().count("Subscribed to device topics") >= 2,
                timeout=30,
                what="the subscriber to rejoin the restarted broker",
            )
            publisher.finish()
            settle_and_check(
                fleet, published, broadcasts, os.environ["REDIS_URL"], fault="Mosquitto restart"
            )
    finally:
        broker.stop()


def test_a_database_locked_for_30_s_loses_no_batch_and_recovers_without_endless_retries(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    fleet: Fleet,
):
    published = fleet.telemetry(2_000)
    retried_before = metric(
        "celery_tasks_retried_total", task="process_device_telemetry", queue="general"
    )
    with Broadcasts(fleet.tenants) as broadcasts:
        start_subscriber()
        lock = hold_the_writer(seconds=30)
        try:
            mqtt_publish(PORT, published)
            assert readings() == 0
            lock.wait(60)
        finally:
            if lock.poll() is None:
                lock.kill()
        released = time.monotonic()
        settle_and_check(
            fleet, published, broadcasts, os.environ["REDIS_URL"], fault="database locked 30 s"
        )
        recovered_in = time.monotonic() - released
    retried = metric("celery_tasks_retried_total", task="process_device_telemetry", queue="general")
    # Each batch retried a bounded number of times, and the backlog done soon after the lock.
    assert retried - retried_before <= 5 * 2_000 / 100
    assert recovered_in < 120
