"""/monitoring/health/ against the real Redis, Mosquitto, Celery workers and subscriber."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from django.test import Client

from apps.monitoring.health import CheckResult, _per_queue
from tests.services import Service

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def running_bus(
    redis_client: object,
    mosquitto_broker: Service,
    all_queue_workers: list[Service],
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


def test_a_queue_without_a_consumer_fails_its_own_check():
    broadcast = CheckResult(
        ok=True,
        latency_ms=5.0,
        details={"critical": {"workers": ["critical@h"]}, "general": {"workers": []}},
    )
    results = _per_queue(broadcast)
    assert results["workers:critical"].ok is True
    assert results["workers:general"].ok is False
    assert results["workers:general"].error == "no worker consumes the general queue"
    assert results["workers:ml_training"].ok is False


def test_every_queue_check_fails_when_the_broadcast_itself_fails():
    results = _per_queue(CheckResult(ok=False, latency_ms=1500.0, error="no answer within 1.5 s"))
    assert {name for name, result in results.items() if not result.ok} == set(results)
    assert all(result.error == "no answer within 1.5 s" for result in results.values())
