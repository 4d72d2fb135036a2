"""/metrics/export/ against real workers, a real Redis and real child processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import Client
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from apps.core import metric_files
from apps.core.intake_status import write_status
from apps.monitoring.exporter import render_metrics
from apps.monitoring.tasks import canary
from intelliwiz_config.celery import app
from tests.environment import free_port
from tests.services import ROOT, Service, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Client, **headers: str) -> Samples:
    response = client.get("/metrics/export/", headers=headers)
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape_until(client: Client, condition: Callable[[Samples], bool], what: str) -> Samples:
    def attempt() -> Samples | None:
        samples = scrape(client)
        return samples if condition(samples) else None

    result: Samples = wait_for(attempt, timeout=30, what=what)
    return result


@pytest.fixture
def general_not_consumed(all_queue_workers: list[Service]) -> Iterator[str]:
    """The general worker stops consuming its queue for the test (it keeps answering pings)."""
    node = f"general@{socket.gethostname()}"
    app.control.cancel_consumer("general", destination=[node], reply=True)
    yield node
    app.control.add_consumer("general", destination=[node], reply=True)


def test_it_shows_workers_and_the_real_depth_and_age_of_a_queue_nobody_consumes(
    client: Client, canaries_consumed: None, general_not_consumed: str
):
    critical_node = f"critical@{socket.gethostname()}"
    scrape_until(
        client,
        lambda s: value(s, "celery_worker_up", queue="critical", hostname=critical_node) == 1,
        what="the critical worker's heartbeat in /metrics/export/",
    )
    first_sent = time.time()
    priorities = [0, 0, 3, 5, 5, 9, 9]  # one Redis list per priority step: all must be counted
    for priority in priorities:
        canary.apply_async(args=("general",), queue="general", priority=priority)

    samples = scrape_until(
        client,
        lambda s: value(s, "celery_queue_depth", queue="general") == len(priorities),
        what=f"celery_queue_depth{{queue='general'}} to reach {len(priorities)}",
    )
    assert value(samples, "celery_queue_depth", queue="critical") == 0
    age = value(samples, "celery_queue_oldest_message_age_seconds", queue="general")
    assert age is not None
    assert 0 < age <= time.time() - first_sent
    assert value(samples, "celery_queue_oldest_message_age_seconds", queue="critical") == 0
    assert value(samples, "message_bus_redis_up") == 1

    # Give the queue back: the worker drains it, running the canaries as it goes.
    app.control.add_consumer("general", destination=[general_not_consumed], reply=True)
    drained = scrape_until(
        client,
        lambda s: value(s, "celery_queue_depth", queue="general") == 0,
        what="the general worker to drain its queue",
    )
    assert value(drained, "celery_queue_oldest_message_age_seconds", queue="general") == 0
    canary_age = value(drained, "celery_queue_canary_age_seconds", queue="general")
    assert canary_age is not None
    assert canary_age < time.time() - first_sent


def test_breakers_and_connected_subscribers_are_read_from_redis_at_scrape_time(
    client: Client, redis_client: redis.Redis[str]
):
    redis_client.set("circuit_breaker:mqtt_broker", json.dumps({"state": "open", "failures": 5}))
    redis_client.set("circuit_breaker:webhook", json.dumps({"state": "half_open", "failures": 1}))
    redis_client.set("circuit_breaker:email", json.dumps({"state": "closed", "failures": 0}))
    redis_client.set("circuit_breaker:garbled", "not json")
    write_status(redis_client, "subscriber-a", connected=True, last_message_at=None)
    write_status(redis_client, "subscriber-b", connected=True, last_message_at=time.time())
    write_status(redis_client, "subscriber-c", connected=False, last_message_at=None)

    samples = scrape(client)

    assert value(samples, "circuit_breaker_state", service="mqtt_broker") == 2
    assert value(samples, "circuit_breaker_state", service="webhook") == 1
    assert value(samples, "circuit_breaker_state", service="email") == 0
    assert value(samples, "circuit_breaker_state", service="garbled") is None
    assert value(samples, "celery_mqtt_subscriber_connected_total") == 2
    # Both connected ones read every kind.
    assert value(samples, "celery_mqtt_prefix_subscribers", prefix="alert/") == 2


def test_a_prefix_only_a_stopped_lane_reads_is_exported_as_unread_while_another_lane_is_connected(
    client: Client, redis_client: redis.Redis[str]
):
    write_status(redis_client, "bus-urgent", connected=False, last_message_at=None, kinds=["alert"])
    routine = ["gps", "telemetry", "sensor", "system_health"]
    write_status(redis_client, "bus", connected=True, last_message_at=time.time(), kinds=routine)

    samples = scrape(client)

    assert value(samples, "celery_mqtt_subscriber_connected_total") == 1
    assert value(samples, "celery_mqtt_prefix_subscribers", prefix="alert/") == 0
    assert value(samples, "celery_mqtt_prefix_subscribers", prefix="device/") == 1
    assert value(samples, "celery_mqtt_prefix_subscribers", prefix="guard/") == 1


def test_a_process_that_died_without_notice_loses_its_live_gauges_and_its_files_at_a_scrape(
    client: Client, redis_client: object
):
    directory: Path = settings.PROMETHEUS_MULTIPROC_DIR
    recorder = (
        "import django; django.setup()\n"
        "from apps.core.metrics import WEBSOCKET_CONNECTIONS\n"
        "WEBSOCKET_CONNECTIONS.inc(3)\n"
        "import os; print(os.getpid())\n"
    )
    pid = subprocess.run(
        [sys.executable, "-c", recorder],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert (directory / f"gauge_livesum_{pid}.db").exists()

    samples = scrape(client)

    assert (value(samples, "websocket_connections_active") or 0) < 3
    assert not list(directory.glob(f"*_{pid}.db"))


def test_an_unreachable_redis_is_reported_as_a_metric_not_as_an_error():
    closed = redis.Redis(port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
    samples = parse(render_metrics(closed).decode())
    assert value(samples, "message_bus_redis_up") == 0
    assert value(samples, "celery_queue_depth", queue="general") is None


def test_the_monitoring_endpoints_require_the_api_key_when_one_is_set(
    client: Client, redis_client: object, settings: object
):
    from tests.environment import canary

    key = canary("monitoring")
    settings.MONITORING_API_KEY = key  # type: ignore[attr-defined]

    refused = client.get("/metrics/export/")
    assert refused.status_code == 401
    assert "Authorization: Bearer" in refused.json()["error"]
    wrong = client.get("/metrics/export/", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    assert client.get("/monitoring/health/").status_code == 401
    prefix = client.get("/metrics/export/", headers={"Authorization": f"Bearer {key[:20]}"})
    assert prefix.status_code == 401
    assert scrape(client, Authorization=f"Bearer {key}")


@pytest.mark.django_db(transaction=True)
def test_after_real_traffic_the_bus_counters_have_moved(client: Client, bus: Service):
    from tests import environment
    from tests.factories import create_tenant_with_devices, panic, telemetry
    from tests.services import mqtt_publish

    create_tenant_with_devices("acme", "sensor-001", "panic-007")
    before = scrape(client)

    def grew(samples: Samples, name: str, **labels: str) -> bool:
        return (value(samples, name, **labels) or 0) > (value(before, name, **labels) or 0)

    mqtt_publish(
        environment.MQTT_PORT,
        [
            ("device/sensor-001/telemetry", telemetry()),
            ("device/sensor-001/telemetry", "not json"),
            ("alert/panic-007/panic", panic()),
        ],
    )
    task = {"task": "process_device_alerts", "queue": "critical"}
    checks = [
        ("mqtt_messages_received_total", {"prefix": "device/"}),
        ("mqtt_messages_rejected_total", {"reason": "json"}),
        ("dead_letters_total", {"stage": "intake", "reason": "json"}),
        ("mqtt_messages_enqueued_total", {"queue": "critical"}),
        ("celery_tasks_received_total", task),
        ("celery_tasks_succeeded_total", task),
        ("celery_task_runtime_seconds_count", task),
        ("bus_messages_processed_total", {"kind": "alert"}),
        ("bus_end_to_end_latency_seconds_count", {"kind": "alert"}),
        ("celery_websocket_broadcast_success_total", {"message_type": "critical_alert"}),
    ]
    scrape_until(
        client,
        lambda samples: all(grew(samples, name, **labels) for name, labels in checks),
        what="every bus counter to move",
    )


# --- The files of dead processes, folded into the archives (apps/core/metric_files.py) ------

# Any process recording metrics: a counter, a histogram and a gauge of each kind of fate.
RECORDER = """
import os, sys
from prometheus_client import Counter, Gauge, Histogram
amount = float(sys.argv[1])
Counter("jobs", "Jobs done", ["kind"]).labels("batch").inc(amount)
Histogram("job_seconds", "Job run time", buckets=(1, 2, 4)).observe(amount / 2)
Gauge("peak_batch", "Largest batch of any process", multiprocess_mode="max").set(amount)
Gauge("busy", "Processes at work", multiprocess_mode="livesum").set(1)
Gauge("resident_bytes", "Memory of each process", multiprocess_mode="all").set(amount * 1024)
print(os.getpid(), flush=True)
sys.stdin.read()  # until the test lets it go
"""
# What must never move when a dead process's files are folded in.
TOTALS = ("jobs_total", "job_seconds_bucket", "job_seconds_count", "job_seconds_sum", "peak_batch")


def recording_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def dead_recorder(directory: Path, amount: float) -> int:
    done = subprocess.run(
        [sys.executable, "-c", RECORDER, str(amount)],
        env=recording_env(directory),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


@pytest.fixture
def live_recorder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A recorder that stays alive (amount 5) in tmp_path until the end of the test."""
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDER, "5"],
        env=recording_env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    wait_for(
        lambda: value(recorded(tmp_path), "resident_bytes", pid=str(process.pid)) == 5 * 1024,
        timeout=30,
        what="the live recorder's metrics",
    )
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=30)


def samples_of(families: Iterable[Metric]) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def recorded(directory: Path) -> Samples:
    """What a scrape of `directory` shows, read without folding anything."""
    return samples_of(metric_files.recorded(directory))


def scrape_dir(directory: Path) -> Samples:
    """A scrape of `directory` as /metrics/export/ makes it: dead processes are folded first."""
    return samples_of(metric_files.ArchivingCollector(directory).collect())


def totals(samples: Samples) -> Samples:
    return {key: number for key, number in samples.items() if key[0] in TOTALS}


def contents(directory: Path, pattern: str = "*") -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob(pattern))}


def test_a_dead_process_files_are_folded_into_archives_and_no_total_moves(
    tmp_path: Path, live_recorder: subprocess.Popen[str]
):
    dead = dead_recorder(tmp_path, 3)
    live_files = contents(tmp_path, f"*_{live_recorder.pid}.db")
    before = recorded(tmp_path)
    assert value(before, "jobs_total", kind="batch") == 3 + 5

    after = scrape_dir(tmp_path)

    assert not list(tmp_path.glob(f"*_{dead}.db"))
    assert sorted(path.name for path in tmp_path.glob("*_archive.db")) == [
        "counter_archive.db",
        "gauge_max_archive.db",
        "histogram_archive.db",
    ]
    assert totals(after) == totals(before)
    assert value(after, "peak_batch") == 5
    # The gauges that only speak for a process (per pid, or living ones) went with it.
    assert value(after, "resident_bytes", pid=str(dead)) is None
    assert value(after, "resident_bytes", pid=str(live_recorder.pid)) == 5 * 1024
    assert value(after, "busy") == 1
    assert contents(tmp_path, f"*_{live_recorder.pid}.db") == live_files

    folded = contents(tmp_path)
    assert scrape_dir(tmp_path) == after
    assert contents(tmp_path) == folded


def test_an_empty_file_a_killed_process_left_breaks_no_scrape_and_goes_with_its_process(
    tmp_path: Path, live_recorder: subprocess.Popen[str]
):
    """prometheus_client creates a process's file and sizes it a moment later: a process
    killed in between leaves it empty for good, and one being created is empty for a moment.
    Neither may fail a scrape (its reader raises on one: prometheus/client_python#1199)."""
    dead_recorder(tmp_path, 3)
    before = recorded(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    killed_while_creating = tmp_path / f"histogram_{int(gone.stdout)}.db"
    being_created = tmp_path / f"summary_{live_recorder.pid}.db"
    killed_while_creating.touch()
    being_created.touch()

    after = scrape_dir(tmp_path)

    assert totals(after) == totals(before)
    assert not killed_while_creating.exists(), "the dead process's empty file stayed"
    assert being_created.exists(), "a living process's file was deleted"
    assert totals(scrape_dir(tmp_path)) == totals(before)


def test_a_pool_child_folds_its_own_files_as_it_exits_counting_itself(tmp_path: Path):
    exiting_child = (
        "import django; django.setup()\n"
        "import os\n"
        "from apps.core.metrics import TASKS_SUCCEEDED\n"
        "from apps.monitoring.celery_hooks import forget_exited_child\n"
        "TASKS_SUCCEEDED.labels('canary', 'ml_training').inc(2)\n"
        "forget_exited_child(pid=os.getpid(), exitcode=0)\n"
        "print(os.getpid())\n"
    )
    pid = subprocess.run(
        [sys.executable, "-c", exiting_child],
        cwd=ROOT,
        env=recording_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()

    assert not list(tmp_path.glob(f"*_{pid}.db"))
    samples = recorded(tmp_path)
    labels = {"task": "canary", "queue": "ml_training"}
    assert value(samples, "celery_tasks_succeeded_total", **labels) == 2
    assert value(samples, "metrics_processes_archived_total") == 1


def test_a_merge_cut_short_after_its_commit_is_finished_once_before_anything_reads(
    tmp_path: Path,
):
    dead = dead_recorder(tmp_path, 3)
    dead_files = sorted(tmp_path.glob(f"*_{dead}.db"))
    dead_contents = contents(tmp_path, f"*_{dead}.db")
    before = recorded(tmp_path)

    metric_files.commit_merge(tmp_path, dead_files)
    assert recorded(tmp_path) == before  # committed, nothing visible yet
    journal = (tmp_path / metric_files.JOURNAL).read_bytes()
    metric_files.finish_merge(tmp_path)
    # As if it crashed after renaming the archives, before deleting the dead files and journal:
    # read as they are, the dead process would count twice.
    for name, content in dead_contents.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / metric_files.JOURNAL).write_bytes(journal)

    after = scrape_dir(tmp_path)

    assert totals(after) == totals(before)
    assert not list(tmp_path.glob(f"*_{dead}.db"))
    assert not (tmp_path / metric_files.JOURNAL).exists()


def test_processes_folding_the_same_dead_files_at_once_fold_each_file_once(tmp_path: Path):
    directory, merger_metrics = tmp_path / "metrics", tmp_path / "merger-metrics"
    directory.mkdir()
    dead = [dead_recorder(directory, amount) for amount in range(1, 7)]
    before = recorded(directory)
    merger = (
        "import django; django.setup()\n"
        "import sys\n"
        "from pathlib import Path\n"
        "from apps.core.metric_files import ArchivingCollector\n"
        "Path(sys.argv[2]).touch()\n"
        "sys.stdin.readline()\n"
        "ArchivingCollector(Path(sys.argv[1])).collect()\n"
    )
    ready = [tmp_path / f"ready-{n}" for n in range(4)]
    mergers = [
        subprocess.Popen(
            [sys.executable, "-c", merger, str(directory), str(flag)],
            cwd=ROOT,
            env=recording_env(merger_metrics),
            stdin=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        wait_for(lambda: all(flag.exists() for flag in ready), timeout=60, what="every merger")
        for process in mergers:  # released together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        assert [process.wait(timeout=60) for process in mergers] == [0] * len(mergers)
    finally:
        for process in mergers:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    assert not [path for pid in dead for path in directory.glob(f"*_{pid}.db")]
    assert totals(recorded(directory)) == totals(before)
    assert value(recorded(merger_metrics), "metrics_processes_archived_total") == len(dead)


def test_observing_a_batch_at_once_counts_exactly_what_observing_each_counts() -> None:
    from prometheus_client import Histogram

    from apps.core.metrics import observe_many

    buckets = (0.01, 0.1, 1, 10)
    amounts = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.1, 3.0, 10.0, 11.5, 1e9, 0.5]
    each = Histogram("test_observe_each_seconds", "", ["kind"], buckets=buckets, registry=None)
    batch = Histogram("test_observe_batch_seconds", "", ["kind"], buckets=buckets, registry=None)
    for amount in amounts:
        each.labels(kind="telemetry").observe(amount)
    observe_many(batch.labels(kind="telemetry"), amounts[:4])
    observe_many(batch.labels(kind="telemetry"), amounts[4:])
    observe_many(batch.labels(kind="telemetry"), [])

    def samples(histogram: Histogram, name: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name.replace(name, "h"), s.labels, s.value)
            for metric in histogram.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        ]

    expected, got = (
        samples(each, "test_observe_each_seconds"),
        samples(batch, "test_observe_batch_seconds"),
    )
    assert [s[:2] for s in got] == [s[:2] for s in expected]
    assert [s[2] for s in got] == pytest.approx([s[2] for s in expected])
    assert ("h_count", {"kind": "telemetry"}, len(amounts)) in expected
