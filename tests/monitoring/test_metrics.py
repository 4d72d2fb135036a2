"""/metrics/export/ against real workers, a real Redis and real child processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

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


def test_live_gauges_of_a_process_that_died_without_notice_are_dropped(
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
    assert not (directory / f"gauge_livesum_{pid}.db").exists()


def test_an_unreachable_redis_is_reported_as_a_metric_not_as_an_error():
    closed = redis.Redis(port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
    samples = parse(render_metrics(closed).decode())
    assert value(samples, "message_bus_redis_up") == 0
    assert value(samples, "celery_queue_depth", queue="general") is None


def test_the_monitoring_endpoints_require_the_api_key_when_one_is_set(
    client: Client, redis_client: object, settings: object
):
    settings.MONITORING_API_KEY = "s3cret-monitoring-key"  # type: ignore[attr-defined]

    refused = client.get("/metrics/export/")
    assert refused.status_code == 401
    assert "Authorization: Bearer" in refused.json()["error"]
    wrong = client.get("/metrics/export/", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    assert client.get("/monitoring/health/").status_code == 401
    assert scrape(client, Authorization="Bearer s3cret-monitoring-key")


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
