"""Scale-out across hosts: three machines as network namespaces, one of them killed mid-stream.

Host `infra` runs PostgreSQL, Redis and Mosquitto; hosts `a` and `b` each run a subscriber on the
shared subscription (MQTT_SHARED_GROUP, a client id of their own) and a worker for every queue,
all reaching infra over the network. A fleet's QoS 1 telemetry is published to infra's broker;
partway through, every process of host `a` is SIGKILLed, and the ledger (tests/ledger.py) holds
each message to exactly one effect: host `b` must carry on with no loss and no duplicate.

`make test-multihost` (CI runs it); skipped only where namespaces cannot be made (not root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apps.core.tasks.celery_settings import QUEUES
from tests import environment
from tests.ledger import Broadcasts, Fleet, bus_counters, count_effects, readings, settle_and_check
from tests.netns import Host, Network
from tests.postgres import Postgres
from tests.services import (
    Service,
    mqtt_publish,
    mqtt_session_kept,
    python_service,
    start_mosquitto,
    start_redis,
    wait_for,
)

pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(bool(Network.unavailable()), reason=Network.unavailable() or ""),
]

REDIS_PORT, MQTT_PORT, POSTGRES_PORT = 6379, 1883, 5432  # each host has ports of its own
SHARED_GROUP = "ingest"
# Members whose heartbeat is older than this are adopted (MQTT_SHARED_ADOPT_AFTER): short here,
# so the test sees it happen within a few heartbeats.
ADOPT_AFTER_SECONDS = 12


@dataclass
class Site:
    """The three hosts and what runs on each."""

    infra: Host
    a: Host
    b: Host
    database_url: str
    redis_url: str
    logs: Path
    services: dict[str, list[Service]] = field(default_factory=dict)

    def environment(self, host: Host) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "MQTT_HOST": self.infra.address,
            "MQTT_PORT": str(MQTT_PORT),
            "MQTT_SHARED_GROUP": SHARED_GROUP,
            "MQTT_CLIENT_ID": f"ingest-{host.name}",
            "MQTT_SHARED_ADOPT_AFTER": str(ADOPT_AFTER_SECONDS),
            "LOG_LEVEL": "INFO",
        }

    def manage(self, host: Host, *args: str) -> str:
        """`manage.py <args>` run to completion on `host`; its output."""
        done = subprocess.run(
            host.argv([sys.executable, "manage.py", *args]),
            env=self.environment(host),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return done.stdout

    def start_application(self, host: Host) -> None:
        """A subscriber and a worker for every queue on `host`, as a production host runs them."""
        env = self.environment(host)
        started = self.services.setdefault(host.name, [])
        subscriber = python_service(
            f"{host.name}-subscriber",
            ["manage.py", "mqtt_subscriber"],
            self.logs / f"{host.name}-subscriber.log",
            on_host=host.argv,
            env=env,
        )
        started.append(subscriber)
        workers = [
            python_service(
                f"{host.name}-{queue.name}",
                ["-m", "apps.core.worker", queue.name],
                self.logs / f"{host.name}-{queue.name}.log",
                on_host=host.argv,
                env=env,
            )
            for queue in QUEUES
        ]
        started.extend(workers)
        for service in started:
            ready = "Subscribed to device topics" if service is subscriber else " ready."
            wait_for(
                lambda service=service, ready=ready: _says(service, ready),
                timeout=120,
                interval=0.2,
                what=f"{service.name} on host {host.name} to be ready",
            )


def _says(service: Service, line: str) -> bool:
    if not service.alive():
        raise RuntimeError(f"{service.name} exited:\n{service.log()[-3000:]}")
    return line in service.log()


@contextmanager
def default_database(url: str) -> Iterator[None]:
    """This test process's ORM on the database at `url` (infra's), the suite's own after."""
    import dj_database_url
    from django.db import connections

    saved = connections.settings["default"]
    connections["default"].close()
    connections.settings["default"] = {**saved, "OPTIONS": {}, **dj_database_url.parse(url)}
    del connections["default"]
    try:
        yield
    finally:
        connections["default"].close()
        connections.settings["default"] = saved
        del connections["default"]


@pytest.fixture
def site(tmp_path: Path, django_db_blocker: object) -> Iterator[Site]:
    with ExitStack() as stack:
        network = stack.enter_context(Network())
        infra, a, b = network.host("infra"), network.host("a"), network.host("b")
        postgres = Postgres(
            POSTGRES_PORT, environment.canary("postgres"), host=infra.address, on_host=infra.argv
        ).start()
        stack.callback(postgres.stop)
        redis = start_redis(REDIS_PORT, tmp_path / "redis", bind=infra.address, on_host=infra.argv)
        stack.callback(redis.stop)
        broker = start_mosquitto(
            MQTT_PORT, tmp_path / "mosquitto", bind=infra.address, on_host=infra.argv
        )
        stack.callback(broker.stop)
        site = Site(
            infra=infra,
            a=a,
            b=b,
            database_url=postgres.url,
            redis_url=environment.redis_url(REDIS_PORT, host=infra.address),
            logs=tmp_path / "log",
        )

        def stop_applications() -> None:
            for services in site.services.values():
                for service in services:
                    service.stop()

        stack.callback(stop_applications)
        site.manage(infra, "migrate", "--no-input")  # once, for every host
        stack.enter_context(django_db_blocker.unblock())  # type: ignore[attr-defined]
        stack.enter_context(default_database(postgres.url))
        yield site


class Stream(threading.Thread):
    """Publishes `messages` to infra's broker in chunks, at most `ahead` beyond what the bus
    has stored, so messages are still arriving when the host dies; `sent` counts those the
    broker acknowledged."""

    def __init__(self, host: str, messages: list[tuple[str, str]], ahead: int = 300) -> None:
        super().__init__(name="multihost-stream", daemon=True)
        self.host, self.messages, self.ahead = host, messages, ahead
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connection

        try:
            for start in range(0, len(self.messages), 50):
                # Devices do not wait for the bus for long: what it strands, the ledger counts.
                with suppress(TimeoutError):
                    wait_for(
                        lambda start=start: readings() >= start - self.ahead,
                        timeout=20,
                        interval=0.05,
                    )
                mqtt_publish(MQTT_PORT, self.messages[start : start + 50], host=self.host)
                self.sent = min(start + 50, len(self.messages))
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()

    def finish(self, timeout: float = 240) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the stream did not finish"
        if self.error:
            raise self.error


def test_one_host_killed_mid_stream_loses_and_repeats_no_message(site: Site):
    fleet = Fleet.create(tenants=4, devices=400)
    published = fleet.telemetry(2_000, prefix="mh")
    site.start_application(site.a)
    site.start_application(site.b)
    with Broadcasts(fleet.tenants, site.redis_url) as broadcasts:
        stream = Stream(site.infra.address, published)
        stream.start()
        wait_for(lambda: stream.sent >= 600 or stream.error, timeout=120, what="600 messages sent")
        killed_at = stream.sent
        killed = site.a.kill()
        survivor = site.services["b"][0]
        wait_for(
            lambda: "adopted session drained and ended" in survivor.log(),
            timeout=ADOPT_AFTER_SECONDS + 60,
            what="host b to adopt, drain and end host a's session",
        )
        stream.finish()
        # What host a's workers had taken and recorded comes back after the visibility timeout
        # (6 min); the runbook's step for a dead worker host brings it back now. Each of those
        # tasks then runs a second time: the ledger shows that changes nothing.
        site.manage(site.b, "requeue", "--force")
        fault = f"host a ({killed} processes) SIGKILLed at message {killed_at}"
        try:
            settle_and_check(fleet, published, broadcasts, site.redis_url, fault=fault, timeout=120)
        finally:
            report(fleet, published, broadcasts, fault)
    assert "member=ingest-a" in survivor.log()
    assert not mqtt_session_kept(MQTT_PORT, "ingest-a", host=site.infra.address), (
        "host a's session outlived adoption"
    )


def report(
    fleet: Fleet, published: list[tuple[str, str]], broadcasts: Broadcasts, fault: str
) -> None:
    effects = count_effects(fleet, published, broadcasts)
    counters = bus_counters()
    figures = {
        "sent": effects.published,
        "processed_once": effects.published - effects.lost_count - len(effects.twice),
        "lost": effects.lost_count,
        "duplicated": effects.duplicate_count,
        "fault": fault,
        **{name: value - broadcasts.metrics_before[name] for name, value in counters.items()},
    }
    print(f"\nmultihost ledger: {json.dumps(figures)}")
