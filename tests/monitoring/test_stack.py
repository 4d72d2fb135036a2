"""`make run`'s stack, started as make run starts it, on free ports and its own VAR_DIR."""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from apps.monitoring import stack as stack_module
from tests.services import ROOT, Stack, descendants, wait_for

pytestmark = pytest.mark.stack


def command_line(process: psutil.Process) -> list[str]:
    """A process's command line; empty for one that just exited (a restarted pool child)."""
    try:
        return process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


@contextlib.contextmanager
def low_file_limit() -> Iterator[None]:
    """Start children as systemd and most logins do: with a soft limit of 1,024 open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with low_file_limit():
        # As make run's .env has it: the README's first message registers its device.
        service = Stack(
            tmp_path / "var",
            tmp_path / "stack.log",
            DEVICE_AUTO_REGISTER="true",
            DEVICE_AUTO_REGISTER_TENANT="demo",
        )
    yield service
    service.stop(timeout=20)


@pytest.mark.django_db(transaction=True)
def test_the_stack_comes_up_healthy_stores_the_first_message_and_sigterm_leaves_nothing(
    stack: Stack,
):
    from django.db import connection

    from apps.devices.models import TelemetryReading

    stack.wait_healthy()
    # runstack polls health on its own schedule; it must report what the test saw.
    wait_for(lambda: "Stack is healthy" in stack.log(), timeout=15, what="the healthy banner")
    # On the database DATABASE_URL names (PostgreSQL under `make test DB=postgres`), the
    # README's first message is stored, and health checks that database.
    assert stack.health()[1]["checks"]["database"]["vendor"] == connection.vendor
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    message = f'{{"battery": 100, "signal": 95, "timestamp": "{now}"}}'
    port = stack.env["MQTT_PORT"]
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-q",
            "1",
            "-t",
            "device/test/telemetry",
            "-m",
            message,
        ],
        check=True,
        timeout=30,
    )
    wait_for(
        lambda: TelemetryReading.objects.filter(device__device_id="test", battery=100).exists(),
        timeout=30,
        what="the README's first message in the database",
    )

    family = [psutil.Process(stack.pid), *descendants(stack.pid)]
    commands = " ".join(" ".join(command_line(process)) for process in family)
    for expected in ("supervisord", "redis-server", "mosquitto", "daphne", "mqtt_subscriber"):
        assert expected in commands
    # Alerts on a session of their own, telemetry on the other (apps/mqtt/subscriber.py, Lane).
    assert "mqtt_subscriber --lane urgent" in commands
    assert "mqtt_subscriber --lane routine" in commands
    for queue in ("critical", "high_priority", "general", "ml_training", "external_api"):
        assert f"apps.core.worker {queue}" in commands or f"--queues {queue}" in commands
    # Started with 1,024 open files, the broker and Daphne still may hold a fleet's sockets.
    for process in family:
        if any(name in " ".join(command_line(process)) for name in ("mosquitto", "daphne")):
            soft, _hard = process.rlimit(psutil.RLIMIT_NOFILE)
            assert soft == stack_module.file_descriptor_limit() > 1024, command_line(process)

    # One service at a time, by the runbook's own unit name: health names what is down.
    assert stack.stackctl("stop", "celery@ml_training").stdout == "celery:ml_training: stopped\n"
    wait_for(
        lambda: stack.failing() == {"workers:ml_training"},
        timeout=30,
        what="health to name the stopped ml_training worker",
    )

    stack.signal(signal.SIGTERM)
    stack.process.wait(timeout=60)
    _gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    assert "Stack stopped." in stack.log()
    # Each program ended on its own at SIGTERM: supervisor never had to SIGKILL one at the end
    # of its stopwaitsecs (which would cut a worker's warm shutdown short).
    supervisor_log = (Path(stack.env["VAR_DIR"]) / "log" / "supervisord.log").read_text()
    stopped = [line for line in supervisor_log.splitlines() if "stopped: " in line]
    assert stopped, supervisor_log[-2000:]
    assert not [line for line in stopped if "SIGKILL" in line], supervisor_log[-2000:]


def test_a_port_already_taken_is_reported_by_name_not_as_a_traceback(tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runstack"],
            cwd=ROOT,
            env=Stack.environment(tmp_path / "var", HTTP_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert f"port {port} for Daphne (HTTP/WebSocket)" in result.stderr
    assert "set HTTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
