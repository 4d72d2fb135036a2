"""Session fixtures that start the real services on the ports tests/environment.py reserved."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import environment
from tests.services import (
    ROOT,
    Service,
    python_service,
    start_mosquitto,
    start_redis,
    stop_all,
    wait_for,
    worker_answers,
)

# Child services log at INFO so tests can wait for what they say.
INFO_LOGS = {**os.environ, "LOG_LEVEL": "INFO"}
_subscriber_ids = itertools.count(1)


# The PostgreSQL run repeats only what can behave differently on PostgreSQL: a test that never
# asks for the test database (no django_db mark, no fixture built on django_db_setup, so
# pytest-django refuses it a connection and no service it starts has a database to use) and what
# deploy/ and scripts/ ship (the stack test_stack starts runs on PostgreSQL in that run) are left
# to the SQLite run, all but PostgreSQL's own configuration. It keeps `make test DB=postgres`
# well inside its time budget.
DATABASE_INDEPENDENT = ("tests/deploy/",)
POSTGRES_ONLY = ("tests/deploy/test_postgresql_config.py",)


def uses_the_database(item: pytest.Item) -> bool:
    return item.get_closest_marker("django_db") is not None or "django_db_setup" in getattr(
        item, "fixturenames", ()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if environment.TEST_DATABASE != "postgres":
        return
    kept, left = [], []
    for item in items:
        path = Path(item.path).relative_to(ROOT).as_posix()
        independent = path.startswith(DATABASE_INDEPENDENT) or not uses_the_database(item)
        (left if independent and not path.startswith(POSTGRES_ONLY) else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


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


@pytest.fixture(scope="session")
def start_celery_workers(
    redis_server: Service, scratch_dir: Path, django_db_setup: None
) -> Iterator[Callable[..., list[Service]]]:
    """Start a real worker for each queue named, with the command line `make run` uses; all at
    once, then wait until each answers a ping."""
    import socket

    started: list[Service] = []

    def start(*queues: str) -> list[Service]:
        services = [
            python_service(
                f"celery-{queue}",
                ["-m", "apps.core.worker", queue],
                scratch_dir / "log" / f"celery-{queue}.log",
                env=INFO_LOGS,
            )
            for queue in queues
        ]
        started.extend(services)
        for queue, service in zip(queues, services, strict=True):
            node = f"{queue}@{socket.gethostname()}"

            def answers(service: Service = service, node: str = node) -> bool:
                if not service.alive():
                    raise RuntimeError(f"worker {node} exited:\n{service.log()[-3000:]}")
                return worker_answers(node)

            try:
                wait_for(answers, timeout=60, what=f"worker {node} to answer ping")
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\nits log:\n{service.log()[-3000:]}") from None
        return services

    yield start
    stop_all(started)


@pytest.fixture(scope="session")
def start_celery_worker(
    start_celery_workers: Callable[..., list[Service]],
) -> Callable[[str], Service]:
    """Start a real worker for one queue, with the command line `make run` uses."""
    return lambda queue: start_celery_workers(queue)[0]


@pytest.fixture(scope="session")
def all_queue_workers(start_celery_workers: Callable[..., list[Service]]) -> list[Service]:
    from apps.core.tasks.celery_settings import QUEUES

    return start_celery_workers(*(queue.name for queue in QUEUES))


@pytest.fixture
def canaries_consumed(redis_client: object, all_queue_workers: list[Service]) -> None:
    """Each queue's health canary has run since Redis was emptied, as beat makes happen."""
    from apps.core.redis_client import state_redis
    from apps.core.tasks.celery_settings import QUEUES
    from apps.monitoring.tasks import canary_key, send_canary

    keys = [canary_key(queue.name) for queue in QUEUES]
    for queue in QUEUES:
        send_canary(queue.name)
    wait_for(
        lambda: state_redis().exists(*keys) == len(keys),
        timeout=30,
        what="every queue's worker to run its health canary",
    )


@pytest.fixture
def start_subscriber(
    redis_server: Service, mosquitto_broker: Service, scratch_dir: Path, django_db_setup: None
) -> Iterator[Callable[..., Service]]:
    """Start the MQTT subscriber process the way `make run` does; stopped after the test.

    Every start within one test reuses the test's own MQTT client id (so its persistent session
    survives a restart), and no two tests share a session; `lane="urgent"` derives its own.
    """
    started: list[Service] = []
    client_id = f"test-subscriber-{next(_subscriber_ids)}"

    def start(lane: str = "all", **env: str) -> Service:
        log_path = scratch_dir / "log" / f"{client_id}-{len(started)}.log"
        service = python_service(
            "mqtt_subscriber",
            ["manage.py", "mqtt_subscriber", "--lane", lane],
            log_path,
            env={**INFO_LOGS, "MQTT_CLIENT_ID": client_id, **env},
        )
        started.append(service)
        # Subscribed, not merely connected: a message published before the broker has the
        # subscription of a brand-new session is delivered to nobody.
        wait_for(
            lambda: "Subscribed to device topics" in service.log(),
            timeout=30,
            what="the subscriber to connect and subscribe",
        )
        return service

    yield start
    stop_all(started)


@pytest.fixture
def bus(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
) -> Service:
    """The running message bus: subscriber plus a worker per queue, on a clean database."""
    return start_subscriber()


def start_daphne(log_path: Path, port: int | None = None, **env: str) -> tuple[Service, int]:
    """Daphne serving the project on a free port (or on `port`, to restart one), as `make run`
    starts it."""
    from apps.monitoring.stack import daphne_argv
    from tests.environment import free_port
    from tests.services import port_open

    port = port or free_port()
    service = Service("daphne", daphne_argv("127.0.0.1", port), log_path, env={**INFO_LOGS, **env})
    wait_for(lambda: port_open(port), timeout=30, what=f"daphne on port {port}")
    return service, port


@pytest.fixture(scope="session")
def daphne_server(redis_server: Service, scratch_dir: Path, django_db_setup: None) -> Iterator[int]:
    """The port of a real Daphne serving HTTP and the NOC WebSocket."""
    service, port = start_daphne(scratch_dir / "log" / "daphne.log")
    yield port
    service.stop()
