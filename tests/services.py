"""Real services for the tests: Redis, Mosquitto, Celery workers, the subscriber, the stack.

Each is a real process on a free port, started on demand and stopped (with its children) at the
end. Waits poll a condition until a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
SBIN = "/usr/sbin:/usr/local/sbin:/sbin"


def executable(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise RuntimeError(f"{name} is not installed; `make test` installs it with apt-get")
    return path


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or condition}{detail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class Service:
    """A child process with its log file; `stop()` ends it and every process it started."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
            **popen,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> None:
        try:
            family = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        _gone, alive = psutil.wait_procs(family, timeout=5)
        for process in alive:
            process.kill()
        self._log.close()


def start_redis(port: int, data_dir: Path) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        executable("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
    ]  # fmt: skip
    service = Service("redis", argv, data_dir / "redis.log")
    wait_for(lambda: port_open(port), timeout=10, what=f"redis on port {port}")
    return service


def start_mosquitto(port: int, data_dir: Path) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {data_dir}/",
                "max_queued_messages 200000",
                "max_inflight_messages 100",
                "message_size_limit 2097152",
                "log_dest stdout",
                f"user {getpass.getuser()}",
                "",
            ]
        )
    )
    service = Service("mosquitto", [executable("mosquitto"), "-c", str(conf)], data_dir / "log")
    wait_for(lambda: port_open(port), timeout=10, what=f"mosquitto on port {port}")
    return service


def python_service(name: str, args: list[str], log_path: Path, **popen: Any) -> Service:
    return Service(name, [sys.executable, *args], log_path, **popen)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
