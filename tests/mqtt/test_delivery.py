"""Nothing lost, nothing twice: persistent sessions, redelivery, crashed workers, priorities."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from apps.alerts.models import Alert
from apps.core.envelope import Envelope
from apps.core.models import DeadLetter, ProcessedMessage
from apps.core.tasks.celery_settings import (
    PROCESS_DEVICE_TELEMETRY,
    QUEUES_BY_NAME,
    broker_list_keys,
    worker_argv,
)
from apps.devices.models import TelemetryReading
from tests import environment
from tests.database import slow_telemetry_inserts
from tests.environment import free_port
from tests.factories import create_tenant_with_devices, panic, telemetry
from tests.services import (
    Service,
    descendants,
    metric,
    mqtt_publish,
    queued_task_args,
    start_redis,
    wait_for,
)

PORT = environment.MQTT_PORT


def numbered_telemetry(count: int, device: str = "sensor-001") -> list[tuple[str, str]]:
    return [
        (f"device/{device}/telemetry", telemetry(battery=50, msg_id=f"m-{i}")) for i in range(count)
    ]


def general_worker(name: str, redis_url: str, log: Path, **env: str) -> Service:
    """A `general` worker of the test's own, on the test's own Redis, as `make run` starts one."""
    argv = [sys.executable, "-m", "apps.core.worker", "general"]
    return Service(name, argv, log, env={**os.environ, "REDIS_URL": redis_url, **env})


def telemetry_envelope(key: str, payload: dict[str, object]) -> dict[str, object]:
    """A sensor-001 telemetry message as the subscriber queues it (key after the `#`)."""
    topic = "device/sensor-001/telemetry"
    return Envelope(
        key=f"{topic}#{key}",
        topic=topic,
        source_id="sensor-001",
        kind="telemetry",
        payload=payload,
        received_at=0.0,
    ).to_message()


def send_batches(redis_url: str, batches: list[list[dict[str, object]]]) -> None:
    """Queue telemetry batches straight into a Redis, as the subscriber would."""
    from intelliwiz_config.celery import app

    with app.connection_for_write(f"{redis_url}/0") as connection:
        for batch in batches:
            app.send_task(PROCESS_DEVICE_TELEMETRY, args=[batch], connection=connection)


def test_messages_published_while_the_subscriber_is_down_arrive_once_and_only_once(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
):
    create_tenant_with_devices("acme", "sensor-001")
    subscriber = start_subscriber()
    subscriber.stop()  # SIGTERM: the session stays with the broker

    messages = numbered_telemetry(5000)
    mqtt_publish(PORT, messages)
    start_subscriber()
    wait_for(
        lambda: TelemetryReading.objects.count() == 5000,
        timeout=120,
        interval=0.5,
        what="5,000 readings from the backlog",
    )

    # The same 5,000 again, then one new message as a marker that the stream got through.
    duplicates_before = metric("bus_messages_duplicate_total", kind="telemetry")
    mqtt_publish(PORT, [*messages, ("device/sensor-001/telemetry", telemetry(msg_id="marker"))])
    wait_for(
        lambda: TelemetryReading.objects.filter(
            idempotency_key__endswith="|device/sensor-001/telemetry#marker"
        ).exists(),
        timeout=120,
        interval=0.5,
        what="the marker message",
    )
    wait_for(lambda: _queues_idle(), timeout=60, what="the general queue to drain")
    assert TelemetryReading.objects.count() == 5001
    assert ProcessedMessage.objects.count() == 5001
    # Each resend recognised as a duplicate, none turned into a failure and a dead letter.
    duplicates = metric("bus_messages_duplicate_total", kind="telemetry") - duplicates_before
    assert duplicates == 5000
    assert not DeadLetter.objects.exists()


def _queues_idle() -> bool:
    """Nothing of the general queue waits in Redis or sits with a worker unacknowledged."""
    from apps.core.redis_client import state_redis
    from apps.monitoring import bus_state

    client = state_redis()
    waiting = {q.name: q.depth for q in bus_state.queue_stats(client)}["general"]
    return waiting == 0 and bus_state.unacked_by_queue(client).get("general", 0) == 0


def test_a_worker_child_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
):

    create_tenant_with_devices("acme", "sensor-001")
    # Every reading of these takes a few milliseconds to insert, so a batch of 20 is nearly
    # always running when its process is killed.
    general = next(w for w in all_queue_workers if w.name == "celery-general")
    lost_before = general.log().count("WorkerLostError")
    total = 1000
    with slow_telemetry_inserts("slow_50", "NEW.battery = 50", steps=10_000):
        start_subscriber(MQTT_BATCH_SIZE="20")
        mqtt_publish(PORT, numbered_telemetry(total))
        wait_for(
            lambda: 0 < TelemetryReading.objects.count() < total,
            timeout=60,
            interval=0.01,
            what="processing to be under way",
        )
        # Kill the pool until a kill has interrupted a running batch (Celery then reports
        # WorkerLostError for it), which proves what this test is about.
        for _round in range(5):
            victims = [c for c in descendants(general.pid) if c.ppid() == general.pid]
            assert victims, "the general worker has no pool processes"
            for child in victims:
                child.send_signal(signal.SIGKILL)
            try:
                wait_for(
                    lambda: general.log().count("WorkerLostError") > lost_before,
                    timeout=5,
                    what="a batch to be lost with its process",
                )
                break
            except TimeoutError:
                continue
        assert general.log().count("WorkerLostError") > lost_before, "no kill hit a batch"

        wait_for(
            lambda: TelemetryReading.objects.count() == total,
            timeout=120,
            interval=0.5,
            what=f"all {total} readings after the crash",
        )
        wait_for(lambda: _queues_idle(), timeout=60, what="the general queue to drain")
    assert TelemetryReading.objects.count() == total
    assert ProcessedMessage.objects.count() == total
    assert not DeadLetter.objects.exists()
    assert general.alive(), "the worker's main process should have replaced its children"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[str]:
    """A Redis of the test's own, so a backlog cannot reach the shared workers."""
    port = free_port()
    service = start_redis(port, tmp_path / "redis")
    yield environment.redis_url(port)
    service.stop()


def test_a_critical_alert_overtakes_a_backlog_of_10000_general_messages(
    private_broker: str,
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    tenant = create_tenant_with_devices("acme", "sensor-001", "panic-007")
    # One task per message, as the runbook's system queued them: 10,000 tasks ahead.
    send_batches(
        private_broker,
        [[telemetry_envelope(f"backlog-{i}", json.loads(telemetry()))] for i in range(10_000)],
    )

    start_subscriber(REDIS_URL=private_broker)
    mqtt_publish(PORT, [("alert/panic-007/panic", panic())])

    import redis

    from apps.monitoring import bus_state

    broker = redis.Redis.from_url(f"{private_broker}/0", decode_responses=True)

    def waiting(queue: str) -> int:
        return {q.name: q.depth for q in bus_state.queue_stats(broker)}[queue]

    def backlog() -> int:
        return waiting("general")

    # The subscriber has queued the alert behind the backlog in time, not in priority.
    wait_for(lambda: waiting("critical") == 1, timeout=30, what="the alert to be queued")
    assert backlog() == 10_000

    # One worker, one process, consuming both queues: it must take the alert first.
    argv = worker_argv("general")
    argv[argv.index("--queues") + 1] = "critical,general"
    argv[argv.index("--concurrency") + 1] = "1"
    argv[argv.index("--hostname") + 1] = f"priority-test-{os.getpid()}@%h"
    env = {**os.environ, "REDIS_URL": private_broker}
    worker = Service(
        "priority-worker", [sys.executable, "-m", *argv], tmp_path / "worker.log", env=env
    )
    try:
        wait_for(
            lambda: Alert.objects.filter(tenant=tenant, alert_type="PANIC").exists(),
            timeout=60,
            what="the panic alert",
        )
        remaining = backlog()
        processed = TelemetryReading.objects.count()
    finally:
        worker.stop()
    assert remaining >= 9_900, f"only {remaining} general messages were still waiting"
    assert processed <= 100
    assert QUEUES_BY_NAME["critical"].priority < QUEUES_BY_NAME["general"].priority


def _writer_taken() -> bool:
    """Whether some transaction holds SQLite's writer now (asked without waiting for it); on
    PostgreSQL, which has no single writer, whether a batch is inserting readings now."""
    import sqlite3

    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND pid <> pg_backend_pid() "
                "AND query LIKE '%%devices_telemetryreading%%'"
            )
            return bool(cursor.fetchone()[0])
    probe = sqlite3.connect(connection.settings_dict["NAME"], timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        return True
    finally:
        if probe.in_transaction:
            probe.execute("ROLLBACK")
        probe.close()
    return False


def test_a_critical_alert_commits_while_a_general_batch_holds_the_writer_which_redoes_it_once(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
):
    """The bound of apps/core/write_priority.py: a critical transaction does not wait for a
    general batch to finish, only for its current statement. Here the batch's reading takes
    seconds to insert (a trigger counts to 5 * 10^6 while no alert exists), and more statements
    follow it (the batch's broadcast is written last); the alert must commit before the batch.
    PostgreSQL has no single writer: the alert commits while the batch sleeps in its insert."""
    from django.db import connection

    create_tenant_with_devices("acme", "sensor-001", "panic-007")
    preempted_before = metric("bus_transactions_preempted_total", queue="general")
    slow, asleep = "NOT EXISTS (SELECT 1 FROM alerts_alert)", 10
    with slow_telemetry_inserts("slow_until_an_alert", slow, 5_000_000, postgres_seconds=asleep):
        start_subscriber()
        mqtt_publish(PORT, [("device/sensor-001/telemetry", telemetry(msg_id="slow"))])
        wait_for(
            _writer_taken, timeout=30, interval=0.01, what="the general batch to take the writer"
        )
        mqtt_publish(PORT, [("alert/panic-007/panic", panic())])
        wait_for(
            lambda: Alert.objects.filter(source_id="panic-007").exists(),
            timeout=60,
            what="the panic alert",
        )
        # Given up, not lost: the batch ran again (quickly, an alert exists now), whole, once.
        wait_for(lambda: TelemetryReading.objects.count() == 1, timeout=30, what="the redone batch")
    # The batch claimed its key as its first statement, before the panic was even published.
    # Had the alert waited for that transaction to commit, the claim would be older than the
    # alert; it is younger: the claim that stands is the redone batch's, after the alert's commit.
    alert = Alert.objects.get(source_id="panic-007")
    claim = ProcessedMessage.objects.get(kind="telemetry")
    assert ProcessedMessage.objects.count() == 2
    assert not DeadLetter.objects.exists()
    if connection.vendor == "postgresql":
        # The batch claimed its key, then slept `asleep` s in its insert, then committed, once,
        # untouched: an alert that had waited for it would be younger than claim + asleep.
        assert alert.created_at < claim.processed_at + timedelta(seconds=asleep), (
            "the alert waited for the general batch"
        )
        assert metric("bus_transactions_preempted_total", queue="general") == preempted_before
        return
    assert claim.processed_at > alert.created_at, "the alert waited for the general batch"
    assert metric("bus_transactions_preempted_total", queue="general") > preempted_before


def test_while_redis_is_down_nothing_is_acknowledged_and_the_broker_keeps_every_message(
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    port = free_port()
    broker_url = environment.redis_url(port)
    create_tenant_with_devices("acme", "sensor-001")
    redis_service = start_redis(port, tmp_path / "redis")
    subscriber = start_subscriber(REDIS_URL=broker_url)
    redis_service.stop()

    mqtt_publish(PORT, numbered_telemetry(200))
    wait_for(
        lambda: "holding them unacknowledged" in subscriber.log(),
        timeout=30,
        what="the subscriber to notice Redis is down",
    )
    # The hardest case: the subscriber dies while holding the messages.
    subscriber.signal(signal.SIGKILL)
    subscriber.process.wait(10)

    redis_service = start_redis(port, tmp_path / "redis")
    worker = general_worker("general-private", broker_url, tmp_path / "worker.log")
    try:
        start_subscriber(REDIS_URL=broker_url)
        wait_for(
            lambda: TelemetryReading.objects.count() == 200,
            timeout=60,
            interval=0.2,
            what="all 200 messages after Redis came back",
        )
    finally:
        worker.stop()
        redis_service.stop()
    assert ProcessedMessage.objects.count() == 200


def all_150_stored_the_taken_batch_sent_again(subscriber: Service) -> None:
    wait_for(
        lambda: TelemetryReading.objects.count() == 150,
        timeout=60,
        interval=0.2,
        what="all 150 messages, the taken batch sent again",
    )
    assert "messages handed on last were sent again" in subscriber.log()


@pytest.mark.faults  # a Redis crash and restart, ~40 s: in `make test-faults`
def test_a_task_taken_from_its_queue_as_redis_died_is_sent_again_when_redis_restarts(
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    """kombu's workers take a task with BRPOP: if Redis dies or the connection breaks before
    the reply arrives, the task is in no queue and in no unacknowledged record. The subscriber
    keeps what it handed on last and sends it again after a Redis restart."""
    import redis

    from apps.monitoring import bus_state

    port = free_port()
    broker_url = environment.redis_url(port)
    create_tenant_with_devices("acme", "sensor-001")
    data = tmp_path / "redis"
    redis_service = start_redis(port, data, appendonly=True, appendfsync="always")
    # 150 messages in two batches: one to take as the lost BRPOP, one left in the queue.
    subscriber = start_subscriber(REDIS_URL=broker_url, MQTT_BATCH_SIZE="100")
    mqtt_publish(PORT, numbered_telemetry(150))
    admin = redis.Redis.from_url(f"{broker_url}/0", decode_responses=True)

    def queued() -> int:
        return sum(queue.depth for queue in bus_state.queue_stats(admin))

    wait_for(lambda: queued() >= 2, timeout=30, what="the subscriber to hand on both batches")
    lists = broker_list_keys("general")
    taken = admin.rpop(next(key for key in lists if admin.llen(key)))
    assert taken is not None  # as a worker's BRPOP whose reply was lost: gone from Redis
    redis_service.signal(signal.SIGKILL)
    redis_service.process.wait(10)
    redis_service = start_redis(port, data, appendonly=True, appendfsync="always")
    worker = general_worker("general-private", broker_url, tmp_path / "worker.log")
    try:
        all_150_stored_the_taken_batch_sent_again(subscriber)
    finally:
        worker.stop()
        redis_service.stop()
    assert ProcessedMessage.objects.count() == 150


def test_a_task_a_killed_worker_took_but_never_recorded_is_sent_again_on_requeue(
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    """A worker killed between its BRPOP and the record of the task as unacknowledged held a
    task that is in no queue and no record. `manage.py requeue` (as kombu's put-back after the
    visibility timeout) asks subscribers to hand on their last messages again."""
    import redis

    from apps.monitoring import bus_state

    port = free_port()
    broker_url = environment.redis_url(port)
    create_tenant_with_devices("acme", "sensor-001")
    redis_service = start_redis(port, tmp_path / "redis")
    # 150 messages in two batches: one to take as the killed worker's, one left in the queue.
    subscriber = start_subscriber(REDIS_URL=broker_url, MQTT_BATCH_SIZE="100")
    admin = redis.Redis.from_url(f"{broker_url}/0", decode_responses=True)

    def queued() -> int:
        return sum(queue.depth for queue in bus_state.queue_stats(admin))

    mqtt_publish(PORT, numbered_telemetry(150))
    wait_for(lambda: queued() >= 2, timeout=30, what="the subscriber to hand on both batches")
    lists = broker_list_keys("general")
    # As the killed worker's BRPOP: gone from its queue, never recorded as unacknowledged.
    assert admin.rpop(next(key for key in lists if admin.llen(key))) is not None
    worker = general_worker("general-private", broker_url, tmp_path / "worker.log")
    try:
        wait_for(
            lambda: (
                queued() == 0
                and bus_state.unacked_count(admin) == 0
                and TelemetryReading.objects.exists()
            ),
            timeout=60,
            what="the worker to process and acknowledge what was left queued",
        )
        assert TelemetryReading.objects.count() < 150
        env = {**os.environ, "REDIS_URL": broker_url}
        requeue = subprocess.run(
            [sys.executable, "manage.py", "requeue", "--force"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "asked the MQTT subscribers to send their last messages again" in requeue.stdout
        all_150_stored_the_taken_batch_sent_again(subscriber)
    finally:
        worker.stop()
        redis_service.stop()
    assert ProcessedMessage.objects.count() == 150


@pytest.mark.faults  # a frozen Redis under load, ~35 s: in `make test-faults`
def test_a_frozen_redis_stalls_nothing_and_loses_nothing(
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    """Redis stops answering without refusing (SIGSTOP): calls fail by their timeouts, so the
    subscriber keeps its MQTT session, acknowledges nothing, and hands everything on later."""
    port = free_port()
    broker_url = environment.redis_url(port)
    create_tenant_with_devices("acme", "sensor-001")
    redis_service = start_redis(port, tmp_path / "redis")
    worker = general_worker(
        "general-private", broker_url, tmp_path / "worker.log", LOG_LEVEL="INFO"
    )
    try:
        subscriber = start_subscriber(REDIS_URL=broker_url)
        mqtt_publish(PORT, numbered_telemetry(100)[:50])
        wait_for(lambda: TelemetryReading.objects.count() == 50, timeout=60, what="the first 50")

        redis_service.signal(signal.SIGSTOP)
        try:
            mqtt_publish(PORT, numbered_telemetry(100)[50:])
            wait_for(
                lambda: "holding them unacknowledged" in subscriber.log(),
                timeout=40,
                what="the subscriber to give up on the frozen Redis instead of hanging",
            )
            # The fault lasts 20 s whatever happens: the subscriber must stay up throughout,
            # holding the messages, while every hand-off fails by its timeout.
            frozen_until = time.monotonic() + 20
            while time.monotonic() < frozen_until:
                assert subscriber.alive(), subscriber.log()[-2000:]
                time.sleep(0.5)
            assert TelemetryReading.objects.count() == 50
        finally:
            redis_service.signal(signal.SIGCONT)

        wait_for(
            lambda: TelemetryReading.objects.count() == 100,
            timeout=90,
            interval=0.5,
            what="the 50 messages held while Redis was frozen",
        )
        assert ProcessedMessage.objects.count() == 100
        assert "Disconnected from MQTT Broker" not in subscriber.log()
        assert not DeadLetter.objects.exists()
    finally:
        worker.stop()
        redis_service.stop()


def test_on_sigterm_the_subscriber_hands_on_and_acknowledges_what_it_holds(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
):
    from apps.core.intake_status import read_statuses
    from apps.core.redis_client import state_redis

    create_tenant_with_devices("acme", "sensor-001")
    # Batches that never fill and never time out: only the shutdown can flush them.
    holding = start_subscriber(MQTT_BATCH_SIZE="100000", MQTT_BATCH_INTERVAL_MS="3600000")
    mqtt_publish(PORT, numbered_telemetry(50))
    wait_for(
        lambda: any(status.last_message_at for status in read_statuses(state_redis())),
        timeout=20,
        what="the subscriber to hold the messages",
    )
    assert TelemetryReading.objects.count() == 0
    holding.stop()
    wait_for(lambda: TelemetryReading.objects.count() == 50, timeout=30, what="the flushed batch")

    # Had they not been acknowledged, the broker would deliver them again to the same session.
    received_before = metric("mqtt_messages_received_total", prefix="device/")
    start_subscriber()
    mqtt_publish(PORT, [("device/sensor-001/telemetry", telemetry(msg_id="marker"))])
    wait_for(
        lambda: TelemetryReading.objects.filter(
            idempotency_key__endswith="|device/sensor-001/telemetry#marker"
        ).exists(),
        timeout=30,
        what="the marker",
    )
    assert metric("mqtt_messages_received_total", prefix="device/") - received_before == 1


def test_the_subscriber_reconnects_after_a_broker_restart_and_carries_on(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    from tests.services import start_mosquitto

    create_tenant_with_devices("acme", "sensor-001")
    port = free_port()
    broker = start_mosquitto(port, tmp_path / "mosquitto")
    subscriber = start_subscriber(MQTT_PORT=str(port), MQTT_RECONNECT_MAX_DELAY="2")
    mqtt_publish(port, [("device/sensor-001/telemetry", telemetry(msg_id="before"))])
    wait_for(lambda: TelemetryReading.objects.count() == 1, timeout=30, what="the first reading")

    broker.stop()
    wait_for(lambda: "reconnecting" in subscriber.log(), timeout=30, what="the disconnect")
    broker = start_mosquitto(port, tmp_path / "mosquitto")
    try:
        wait_for(
            lambda: subscriber.log().count("Connected to MQTT Broker") == 2,
            timeout=30,
            what="the subscriber to reconnect",
        )
        mqtt_publish(port, [("device/sensor-001/telemetry", telemetry(msg_id="after"))])
        wait_for(lambda: TelemetryReading.objects.count() == 2, timeout=30, what="the next one")
    finally:
        broker.stop()
    assert subscriber.alive()


def test_a_poison_message_is_dead_lettered_alone_after_bounded_retries(
    private_broker: str, transactional_db: None, tmp_path: Path
):
    create_tenant_with_devices("acme", "sensor-001")
    good = telemetry_envelope("good", json.loads(telemetry(battery=70)))
    # Passed intake once, but its payload can no longer be read (say, a schema change).
    poison = telemetry_envelope("poison", {"x": 1})
    log = tmp_path / "worker.log"
    worker = general_worker("general-poison", private_broker, log, TASK_MAX_RETRIES="1")
    try:
        send_batches(private_broker, [[good, poison]])
        letter = wait_for(
            lambda: DeadLetter.objects.filter(reason="processing_failed").first(),
            timeout=60,
            what="the poison message to be dead-lettered",
        )
    finally:
        worker.stop()
    assert TelemetryReading.objects.get().idempotency_key == "device/sensor-001/telemetry#good"
    assert letter.envelope["key"] == "device/sensor-001/telemetry#poison"
    assert "ValidationError" in letter.detail
    assert DeadLetter.objects.count() == 1
    assert "retrying" in (tmp_path / "worker.log").read_text()


def test_a_message_of_another_release_is_dead_lettered_and_replayable_not_dropped(
    private_broker: str, redis_server: Service, transactional_db: None, tmp_path: Path
):
    create_tenant_with_devices("acme", "sensor-001")
    readable = telemetry_envelope("now", json.loads(telemetry(battery=70)))
    # An envelope written by a release with a field this one does not know.
    foreign = {**readable, "payload": json.loads(telemetry(battery=40)), "v": 9}
    worker = general_worker("general-foreign", private_broker, tmp_path / "worker.log")
    try:
        send_batches(private_broker, [[readable, foreign]])
        letter = wait_for(
            lambda: DeadLetter.objects.filter(reason="unreadable_envelope").first(),
            timeout=60,
            what="the unreadable envelope to be dead-lettered",
        )
        assert TelemetryReading.objects.get().battery == 70
        assert letter.topic == "device/sensor-001/telemetry"
        assert "fields: key, kind, payload" in letter.detail
        assert letter.payload_text().startswith('{"battery": 40')

        # Replayed by the operator's command on this bus, it goes through intake again, becomes
        # an envelope of this release and is stored (by this test's worker, not a shared one).
        replay = subprocess.run(
            [sys.executable, "manage.py", "dead_letters", "replay", str(letter.pk)],
            env={**os.environ, "REDIS_URL": private_broker},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "Replayed 1, still rejected 0." in replay.stdout
        wait_for(
            lambda: TelemetryReading.objects.filter(battery=40).exists(),
            timeout=60,
            what="the replayed reading to be stored",
        )
    finally:
        worker.stop()
    assert TelemetryReading.objects.count() == 2


def test_a_retry_that_cannot_be_published_leaves_the_batch_in_the_broker(
    private_broker: str, transactional_db: None, tmp_path: Path
):
    """Celery drops a delivery whose retry it cannot publish; ours stays in Redis instead."""
    import redis

    from apps.monitoring import bus_state

    create_tenant_with_devices("acme", "sensor-001")
    admin = redis.Redis.from_url(private_broker, decode_responses=True)
    # A worker account that may take tasks but not publish any (as Redis out of memory would).
    admin.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "~*", "&*", "+@all", "-lpush")
    worker_url = private_broker.replace(f":{environment.REDIS_PASSWORD}@", "worker:pw@")
    failing = telemetry_envelope("fails", {"x": 1})  # fails in processing: a retry is asked
    log = tmp_path / "worker.log"
    worker = general_worker("general-cannot-publish", worker_url, log, LOG_LEVEL="INFO")
    try:
        send_batches(private_broker, [[failing]])
        wait_for(
            lambda: "could not publish the retry" in worker.log(),
            timeout=60,
            what="the worker to fail publishing the retry",
        )
        # Neither acknowledged nor lost: still held for the broker to hand out again.
        wait_for(
            lambda: bus_state.unacked_count(admin) == 1,
            timeout=10,
            what="the delivery to stay in the broker",
        )
        held = admin.hvals(bus_state.UNACKED_KEY)
        assert "device/sensor-001/telemetry#fails" in held[0]
    finally:
        worker.stop()


def test_a_batch_that_kills_its_worker_is_split_its_killer_dead_lettered_and_the_rest_drains(
    private_broker: str, transactional_db: None, tmp_path: Path
):

    create_tenant_with_devices("acme", "sensor-001")
    # A reading with battery 13 never finishes inserting: the database works on it (SQLite in
    # C, where no Python exception such as the soft time limit reaches; PostgreSQL in its own
    # process), so the hard time limit kills the worker.
    messages = [
        telemetry_envelope(str(battery), json.loads(telemetry(battery=battery)))
        for battery in [*range(20, 40), 13]
    ]
    argv = worker_argv("general")
    argv[argv.index("--soft-time-limit") + 1] = "1"
    argv[argv.index("--time-limit") + 1] = "2"
    argv[argv.index("--concurrency") + 1] = "1"
    worker = Service(
        "general-killed",
        [str(Path(sys.executable).parent / "celery"), *argv[1:]],
        tmp_path / "worker.log",
        env={**os.environ, "REDIS_URL": private_broker, "TASK_MAX_DELIVERIES": "2"},
    )
    behind = [
        [telemetry_envelope(f"behind-{batch}-{i}", json.loads(telemetry())) for i in range(100)]
        for batch in range(100)
    ]
    with slow_telemetry_inserts("poison_13", "NEW.battery = 13", steps=None):
        try:
            send_batches(private_broker, [messages, *behind])  # the killer first, 10,000 after
            letter = wait_for(
                lambda: DeadLetter.objects.filter(reason="poison").first(),
                timeout=120,
                interval=0.5,
                what="the message that kills its worker to be dead-lettered",
            )
            wait_for(
                lambda: TelemetryReading.objects.count() == 20 + 10_000,
                timeout=120,
                interval=0.5,
                what="the other 20 messages of its batch and the 10,000 behind it",
            )
        finally:
            worker.stop()
    assert letter.envelope["key"] == "device/sensor-001/telemetry#13"
    assert "killed the worker 2 times" in letter.detail
    assert DeadLetter.objects.count() == 1
    assert "split into single messages" in worker.log()


def test_a_flood_while_redis_is_down_is_let_go_not_held_and_qos1_still_arrives(
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    port = free_port()
    broker_url = environment.redis_url(port)
    create_tenant_with_devices("acme", "sensor-001")
    redis_service = start_redis(port, tmp_path / "redis")
    subscriber = start_subscriber(REDIS_URL=broker_url, MQTT_HOLD_MAX_MESSAGES="300")
    redis_service.stop()
    dropped_before = metric("mqtt_messages_dropped_total", reason="held_too_much")

    # QoS 0 is at most once; QoS 1 must all arrive, whatever the subscriber could not hold.
    flood = [("device/sensor-001/telemetry", telemetry(battery=40)) for _ in range(2000)]
    mqtt_publish(PORT, flood, qos=0)
    mqtt_publish(PORT, numbered_telemetry(500))
    wait_for(
        lambda: "holding too much while messages cannot be handed on" in subscriber.log(),
        timeout=60,
        what="the subscriber to let go and leave the broker",
    )
    assert metric("mqtt_messages_dropped_total", reason="held_too_much") > dropped_before
    assert subscriber.alive()

    redis_service = start_redis(port, tmp_path / "redis")
    worker = general_worker("general-after-flood", broker_url, tmp_path / "worker.log")
    try:
        wait_for(
            lambda: TelemetryReading.objects.filter(battery=50).count() == 500,
            timeout=120,
            interval=0.5,
            what="every QoS 1 message once Redis is back",
        )
    finally:
        worker.stop()
        redis_service.stop()
    assert "rejoining the broker" in subscriber.log()
    # Back with Redis up, it hands on what the broker redelivers, however much comes at once:
    # it does not leave again (each time, the broker would send the same burst back).
    assert subscriber.log().count("leaving the broker until Redis and the database answer") == 1
    assert not DeadLetter.objects.exists()


def queued_batch_sizes(broker: object) -> list[int]:
    """The number of messages in each telemetry task waiting in the general queue."""
    from apps.core.tasks.celery_settings import broker_list_keys

    sizes = []
    for key in broker_list_keys("general"):
        for raw in broker.lrange(key, 0, -1):  # type: ignore[attr-defined]
            sizes.append(len(queued_task_args(raw)[0]))
    return sizes


def queue_telemetry(
    private_broker: str,
    start_subscriber: Callable[..., Service],
    total: int,
    *,
    size: int,
    max_size: int,
) -> tuple[Any, list[int]]:
    """Publish `total` telemetry messages through a subscriber with these batch sizes into a
    Redis no worker reads; the broker client and the batch sizes once all are queued."""
    import redis

    create_tenant_with_devices("acme", "sensor-001")
    start_subscriber(
        REDIS_URL=private_broker, MQTT_BATCH_SIZE=str(size), MQTT_BATCH_MAX_SIZE=str(max_size)
    )
    mqtt_publish(PORT, numbered_telemetry(total))
    broker = redis.Redis.from_url(f"{private_broker}/0", decode_responses=True)
    wait_for(
        lambda: sum(queued_batch_sizes(broker)) == total,
        timeout=30,
        what=f"all {total} messages in the general queue",
    )
    return broker, queued_batch_sizes(broker)


def test_batches_grow_while_their_queue_is_backed_up_and_every_message_is_stored_once(
    private_broker: str,
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    tmp_path: Path,
):
    # No worker takes from this Redis: from the first batch on, the general queue is backed up.
    total = 600
    broker, sizes = queue_telemetry(private_broker, start_subscriber, total, size=20, max_size=200)
    assert max(sizes) > 20, f"no batch grew past MQTT_BATCH_SIZE: {sizes}"
    assert max(sizes) <= 200, f"a batch grew past MQTT_BATCH_MAX_SIZE: {sizes}"

    worker = general_worker("celery-general-private", private_broker, tmp_path / "general.log")
    try:
        wait_for(
            lambda: TelemetryReading.objects.count() == total,
            timeout=60,
            what=f"all {total} readings once a worker takes the queue",
        )
        wait_for(
            lambda: not queued_batch_sizes(broker), timeout=30, what="the general queue to drain"
        )
    finally:
        worker.stop()
    assert TelemetryReading.objects.count() == total
    assert ProcessedMessage.objects.count() == total


def test_messages_read_in_one_burst_still_go_in_batches_of_at_most_the_max_size(
    private_broker: str, start_subscriber: Callable[..., Service], transactional_db: None
):
    # The bench's baseline: a task per message, however many the socket holds at once.
    _broker, sizes = queue_telemetry(private_broker, start_subscriber, 300, size=1, max_size=1)
    assert set(sizes) == {1}
