"""/monitoring/health/ against the real Redis, Mosquitto, Celery workers and subscriber."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client

from apps.core.intake_status import write_status
from apps.core.tasks.celery_settings import QUEUES
from apps.monitoring.health import CheckResult, _per_queue, canary_max_age
from tests.services import Service

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def running_bus(
    redis_client: object,
    mosquitto_broker: Service,
    all_queue_workers: list[Service],
    canaries_consumed: None,
    start_subscriber: Callable[[], Service],
) -> Service:
    return start_subscriber()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word: a hung dependency."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_health_is_200_with_every_component_named_when_all_are_up(
    client: Client, running_bus: Service
):
    response = client.get("/monitoring/health/")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "healthy"
    expected = {
        "database",
        "redis",
        "channel_layer",
        "mqtt_broker",
        "mqtt_subscriber",
        "workers:critical",
        "workers:high_priority",
        "workers:general",
        "workers:ml_training",
        "workers:external_api",
    }
    assert set(body["checks"]) == expected
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["workers:critical"]["workers"] == [f"critical@{socket.gethostname()}"]
    assert 0 <= body["checks"]["workers:critical"]["canary_age_s"] < 60
    assert "latency_ms" in body["checks"]["redis"]


def test_health_is_503_naming_the_subscriber_when_it_is_not_running(
    client: Client,
    redis_client: object,
    mosquitto_broker: Service,
    all_queue_workers: list[Service],
):
    response = client.get("/monitoring/health/")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unhealthy"
    assert body["checks"]["mqtt_subscriber"]["ok"] is False
    assert "no subscriber" in body["checks"]["mqtt_subscriber"]["error"]
    assert body["checks"]["redis"]["ok"] is True


def test_health_answers_within_its_bound_when_the_broker_hangs(
    client: Client, running_bus: Service, silent_server: int, settings: object
):
    settings.MQTT_PORT = silent_server  # type: ignore[attr-defined]
    started = time.monotonic()
    response = client.get("/monitoring/health/")
    elapsed = time.monotonic() - started
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["mqtt_broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    # The endpoint's contract: an answer within 2 s even when a component never answers.
    assert elapsed < 2.0


def every_queue_subscribed() -> CheckResult:
    details = {queue.name: {"workers": [f"{queue.name}@h"]} for queue in QUEUES}
    return CheckResult(ok=True, latency_ms=5.0, details=details)


def canaries_run(seconds_ago: float, **overrides: Any) -> CheckResult:
    details = {queue.name: time.time() - seconds_ago for queue in QUEUES} | overrides
    return CheckResult(ok=True, latency_ms=1.0, details=details)


def test_a_queue_without_a_consumer_fails_its_own_check():
    broadcast = CheckResult(
        ok=True,
        latency_ms=5.0,
        details={"critical": {"workers": ["critical@h"]}, "general": {"workers": []}},
    )
    results = _per_queue(broadcast, canaries_run(1))
    assert results["workers:critical"].ok is True
    assert results["workers:general"].ok is False
    assert results["workers:general"].error == "no worker consumes the general queue"
    assert results["workers:ml_training"].ok is False


def test_a_queue_whose_worker_answers_but_runs_no_canary_fails_its_own_check():
    critical = QUEUES[0]
    stale = canary_max_age(critical) + 5
    results = _per_queue(
        every_queue_subscribed(), canaries_run(1, critical=time.time() - stale, general=None)
    )
    assert results["workers:high_priority"].ok is True
    assert results["workers:critical"].ok is False
    assert "critical queue is not being consumed: its last canary ran" in str(
        results["workers:critical"].error
    )
    assert results["workers:general"].ok is False
    assert "no canary from the general queue has run yet" in str(results["workers:general"].error)


def test_a_long_running_pool_is_given_its_time_limit_before_its_canary_counts_as_late():
    ml_training = next(queue for queue in QUEUES if queue.name == "ml_training")
    an_hour = 3600.0
    assert canary_max_age(ml_training) > an_hour
    results = _per_queue(every_queue_subscribed(), canaries_run(an_hour))
    assert results["workers:ml_training"].ok is True
    assert results["workers:critical"].ok is False


def test_every_queue_check_fails_when_the_broadcast_itself_fails():
    failed = CheckResult(ok=False, latency_ms=1500.0, error="no answer within 1.5 s")
    results = _per_queue(failed, canaries_run(1))
    assert {name for name, result in results.items() if not result.ok} == set(results)
    assert all(result.error == "no answer within 1.5 s" for result in results.values())


@pytest.mark.django_db
def test_health_fails_naming_the_setting_when_fewer_subscribers_than_expected_are_connected(
    client: Client, redis_client, settings
):
    settings.MQTT_SUBSCRIBERS_EXPECTED = 4
    for client_id in ("host-a", "host-a-urgent", "host-b-urgent"):
        write_status(redis_client, client_id, connected=True, last_message_at=None)
    write_status(redis_client, "host-b", connected=False, last_message_at=None)
    check = client.get("/monitoring/health/").json()["checks"]["mqtt_subscriber"]
    assert check["ok"] is False
    assert "3 of MQTT_SUBSCRIBERS_EXPECTED=4 subscribers connected" in check["error"]

    settings.MQTT_SUBSCRIBERS_EXPECTED = 3
    check = client.get("/monitoring/health/").json()["checks"]["mqtt_subscriber"]
    assert check["ok"] is True
