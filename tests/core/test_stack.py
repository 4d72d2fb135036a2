"""`make run`'s stack, started as make run starts it, on free ports and its own VAR_DIR."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.environment import free_port
from tests.services import ROOT, Service, descendants, wait_for

pytestmark = pytest.mark.stack


def stack_env(var_dir: Path, **overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        "VAR_DIR": str(var_dir),
        "HTTP_PORT": str(free_port()),
        "MQTT_PORT": str(free_port()),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}",
        "MQTT_CLIENT_ID": "stack-test-subscriber",
        "LOG_LEVEL": "INFO",
        **overrides,
    }


def health(port: int) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{port}/monitoring/health/"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def failing(port: int) -> set[str]:
    _status, body = health(port)
    checks = body["checks"]
    assert isinstance(checks, dict)
    return {name for name, check in checks.items() if not check["ok"]}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Service, dict[str, str]]]:
    env = stack_env(tmp_path / "var")
    service = Service(
        "stack", [sys.executable, "manage.py", "runstack"], tmp_path / "stack.log", env=env
    )
    yield service, env
    service.stop(timeout=20)


def test_the_stack_comes_up_healthy_and_sigterm_leaves_no_process_behind(
    stack: tuple[Service, dict[str, str]],
):
    service, env = stack
    port = int(env["HTTP_PORT"])
    try:
        wait_for(lambda: health(port)[0] == 200, timeout=120, interval=0.5, what="health 200")
    except TimeoutError:
        pytest.fail(f"stack never became healthy; its output:\n{service.log()}")
    assert "Stack is healthy" in service.log()

    family = [psutil.Process(service.pid), *descendants(service.pid)]
    commands = " ".join(" ".join(process.cmdline()) for process in family)
    for expected in ("supervisord", "redis-server", "mosquitto", "daphne", "mqtt_subscriber"):
        assert expected in commands
    for queue in ("critical", "high_priority", "general", "ml_training", "external_api"):
        assert f"apps.core.worker {queue}" in commands or f"--queues {queue}" in commands

    # One service at a time, as the runbook does with systemctl: health names what is down.
    supervisorctl = [
        str(Path(sys.executable).parent / "supervisorctl"),
        "-c",
        str(Path(env["VAR_DIR"]) / "supervisord.conf"),
    ]
    subprocess.run([*supervisorctl, "stop", "celery:ml_training"], check=True, env=env)
    wait_for(
        lambda: failing(port) == {"workers:ml_training"},
        timeout=30,
        what="health to name the stopped ml_training worker",
    )

    started = time.monotonic()
    service.signal(signal.SIGTERM)
    service.process.wait(timeout=30)
    assert time.monotonic() - started < 15, "the stack took 15 s or more to stop"
    _gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    assert "Stack stopped." in service.log()


def test_a_port_already_taken_is_reported_by_name_not_as_a_traceback(tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runstack"],
            cwd=ROOT,
            env=stack_env(tmp_path / "var", HTTP_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert f"port {port} for Daphne (HTTP/WebSocket)" in result.stderr
    assert "set HTTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
