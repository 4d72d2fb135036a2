"""Session fixtures that start the real services on the ports tests/environment.py reserved."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import environment
from tests.services import Service, python_service, start_mosquitto, start_redis, wait_for

# Child services log at INFO so tests can wait for what they say.
INFO_LOGS = {**os.environ, "LOG_LEVEL": "INFO"}


@pytest.fixture(scope="session")
def scratch_dir() -> Path:
    return environment.SCRATCH


@pytest.fixture(scope="session")
def redis_server(scratch_dir: Path) -> Iterator[Service]:
    service = start_redis(environment.REDIS_PORT, scratch_dir / "redis")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def mosquitto_broker(scratch_dir: Path) -> Iterator[Service]:
    service = start_mosquitto(environment.MQTT_PORT, scratch_dir / "mosquitto")
    yield service
    service.stop()


@pytest.fixture
def redis_client(redis_server: Service) -> object:
    """The bus's Redis with every database emptied before the test."""
    from apps.core.redis_client import state_redis

    client = state_redis()
    client.flushall()
    return client


def _celery_ping(node: str) -> bool:
    from intelliwiz_config.celery import app

    replies = app.control.ping(destination=[node], timeout=0.5)
    return any(node in reply for reply in replies)


@pytest.fixture(scope="session")
def start_celery_worker(
    redis_server: Service, scratch_dir: Path
) -> Iterator[Callable[[str], Service]]:
    """Start a real worker for one queue, with the command line `make run` uses."""
    import socket

    started: list[Service] = []

    def start(queue: str) -> Service:
        service = python_service(
            f"celery-{queue}",
            ["-m", "apps.core.worker", queue],
            scratch_dir / "log" / f"celery-{queue}.log",
            env=INFO_LOGS,
        )
        started.append(service)
        node = f"{queue}@{socket.gethostname()}"
        wait_for(lambda: _celery_ping(node), timeout=60, what=f"worker {node} to answer ping")
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def all_queue_workers(start_celery_worker: Callable[[str], Service]) -> list[Service]:
    from apps.core.tasks.celery_settings import QUEUES

    return [start_celery_worker(queue.name) for queue in QUEUES]


@pytest.fixture
def start_subscriber(
    redis_server: Service, mosquitto_broker: Service, scratch_dir: Path
) -> Iterator[Callable[[], Service]]:
    """Start the MQTT subscriber process the way `make run` does; stopped after the test."""
    started: list[Service] = []

    def start() -> Service:
        service = python_service(
            "mqtt_subscriber",
            ["manage.py", "mqtt_subscriber"],
            scratch_dir / "log" / "mqtt_subscriber.log",
            env=INFO_LOGS,
        )
        started.append(service)
        wait_for(
            lambda: "Connected to MQTT Broker" in service.log(),
            timeout=30,
            what="the subscriber to connect",
        )
        return service

    yield start
    for service in started:
        service.stop()
