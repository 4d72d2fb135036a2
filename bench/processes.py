"""CPU seconds and peak RSS of each kind of process of the stack, with psutil.

The kinds are supervisor's programs (`supervisorctl status` names them and their pids): redis,
mosquitto, daphne, one `worker:<queue>` per Celery queue, beat, the subscriber (telemetry and
the other routine kinds), `subscriber:urgent` (alerts). A kind is its process and every
descendant (a Celery worker and its pool): CPU is summed over that tree from
`cpu_times()` (a child that exited counts in its parent's children_* times), RSS is sampled
every SAMPLE_SECONDS and summed over the tree (shared pages count once per process).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

SAMPLE_SECONDS = 0.25
STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s+pid (?P<pid>\d+)", re.M)


def kind_of(program: str) -> str:
    """supervisor's `celery:general` -> `worker:general`; `celerybeat` -> `beat`."""
    group, _, name = program.partition(":")
    if group == "celery":
        return f"worker:{name}"
    kinds = {
        "celerybeat": "beat",
        "mqtt_subscriber": "subscriber",
        "mqtt_subscriber_urgent": "subscriber:urgent",
    }
    return kinds.get(program, program)


def supervised_pids(status_output: str) -> dict[str, int]:
    """Each running program's kind and pid, from `supervisorctl status`."""
    return {
        kind_of(m["name"]): int(m["pid"])
        for m in STATUS_LINE.finditer(status_output)
        if m["state"] == "RUNNING"
    }


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in tree(pid):
        try:
            t = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for process in tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class PhaseUsage:
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


class ProcessMonitor:
    """Samples the RSS of every kind in a thread; measures CPU per phase."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}  # over the whole run
        self._phase_peak: dict[str, int] | None = None
        self.restarts: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def track(self, pids: dict[str, int]) -> None:
        """Follow these processes (again): a program whose pid changed was restarted."""
        with self._lock:
            for kind, pid in pids.items():
                if kind in self.pids and self.pids[kind] != pid:
                    self.restarts.append(kind)
                self.pids[kind] = pid

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            with self._lock:
                pids = dict(self.pids)
            for kind, pid in pids.items():
                rss = rss_bytes(pid)
                with self._lock:
                    self.peak_rss[kind] = max(self.peak_rss.get(kind, 0), rss)
                    if self._phase_peak is not None:
                        self._phase_peak[kind] = max(self._phase_peak.get(kind, 0), rss)

    def cpu(self) -> dict[str, float]:
        with self._lock:
            pids = dict(self.pids)
        return {kind: cpu_seconds(pid) for kind, pid in pids.items()}

    @contextmanager
    def phase(self) -> Iterator[PhaseUsage]:
        """CPU used by each kind between entry and exit, and their peak RSS meanwhile."""
        usage = PhaseUsage()
        before = self.cpu()
        with self._lock:
            self._phase_peak = {}
        try:
            yield usage
        finally:
            after = self.cpu()
            usage.cpu_seconds = {
                kind: round(max(0.0, after[kind] - before.get(kind, 0.0)), 2) for kind in after
            }
            with self._lock:
                peaks, self._phase_peak = self._phase_peak or {}, None
            usage.peak_rss_mb = {kind: round(rss / 2**20, 1) for kind, rss in peaks.items()}
