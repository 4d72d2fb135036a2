"""The load generator: several publisher processes (bench/publisher.py), one per device group.

Each device's messages all go through one process, in order, as the device would send them.
The processes connect first, then start together on `go`; each reports what the broker
acknowledged and when, and how much CPU it used, so the report can show that the generator
was not the bottleneck.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests.services import ROOT

Message = tuple[str, str]  # topic, payload


class LoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadResult:
    messages: int
    acked: int
    started: float  # time.monotonic() of `go`
    finished: float  # the last publisher's last PUBACK
    cpu_seconds: float
    processes: int

    @property
    def rate(self) -> float:
        """What the broker acknowledged per second, all publishers together."""
        return self.acked / max(self.finished - self.started, 1e-6)


def device_of(topic: str) -> str:
    return topic.split("/")[1]


def read_line(process: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The next line a child process prints, within `timeout` s."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    if not readable:
        raise LoadError(f"no answer from {process.args[2]} within {timeout:.0f} s ({what})")
    line = process.stdout.readline().decode().strip()
    if not line:
        raise LoadError(
            f"{process.args[2]} exited before {what}: see its errors above, or the publishers' "
            "logs (bench/*.log in the scratch directory)"
        )
    return line


class Load:
    """One run of the generator; `start()` returns once every message is on its way."""

    def __init__(
        self,
        port: int,
        messages: list[Message],
        workdir: Path,
        *,
        name: str,
        processes: int = 4,
        rate: float | None = None,
        timeout: float = 600,
    ) -> None:
        self.port = port
        self.name = name
        self.rate = rate
        self.timeout = timeout
        groups: list[list[Message]] = [[] for _ in range(processes)]
        for message in messages:
            groups[zlib.crc32(device_of(message[0]).encode()) % processes].append(message)
        self.groups = [group for group in groups if group]
        self.total = len(messages)
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.started = 0.0

    def start(self) -> float:
        """Connect every publisher, then start them together; returns the start time."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for n, group in enumerate(self.groups):
            path = self.workdir / f"{self.name}-{n}.messages"
            path.write_text("".join(f"{topic}\t{payload}\n" for topic, payload in group))
            argv = [
                sys.executable, "-m", "bench.publisher",
                "--port", str(self.port),
                "--client-id", f"bench-{self.name}-{n}",
                "--messages", str(path),
                "--timeout", str(self.timeout),
            ]  # fmt: skip
            if self.rate:
                argv += ["--rate", f"{self.rate * len(group) / self.total:.3f}"]
            log = (self.workdir / f"{self.name}-{n}.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
                )
            )
        for process in self.processes:
            if read_line(process, 60, "connecting to the broker") != "ready":
                raise LoadError("a publisher did not connect to the broker")
        self.started = time.monotonic()
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        return self.started

    def running(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def wait(self) -> LoadResult:
        reports = []
        for process in self.processes:
            line = read_line(process, self.timeout + 30, "reporting what it published")
            reports.append(json.loads(line))
            process.wait(30)
        acked = sum(report["acked"] for report in reports)
        result = LoadResult(
            messages=self.total,
            acked=acked,
            started=self.started,
            finished=max(report["last_ack_at"] or report["finished"] for report in reports),
            cpu_seconds=sum(report["cpu_seconds"] for report in reports),
            processes=len(reports),
        )
        if acked < self.total:
            raise LoadError(
                f"the broker acknowledged {acked} of {self.total} messages ({self.name}); "
                f"is Mosquitto overloaded or down? see its log and {self.workdir}"
            )
        return result

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)


def publish(port: int, messages: list[Message], workdir: Path, **options: object) -> LoadResult:
    load = Load(port, messages, workdir, **options)  # type: ignore[arg-type]
    try:
        load.start()
        return load.wait()
    finally:
        load.stop()
