"""CPU seconds and peak RSS of each kind of process of the stack, with psutil.

The kinds are supervisor's programs (`supervisorctl status` names them and their pids): redis,
mosquitto, daphne, one `worker:<queue>` per Celery queue, beat, the subscriber (telemetry and
the other routine kinds), `subscriber:urgent` (alerts). A kind is its process and every
descendant (a Celery worker and its pool): CPU is summed over that tree from
`cpu_times()` (a child that exited counts in its parent's children_* times), RSS is sampled
every SAMPLE_SECONDS and summed over the tree (shared pages count once per process).

The sampler shares the stack's two cores, so it must cost next to nothing: the trees come from
one scan of the process table every TREE_SECONDS (a pool replaces a child now and then), and a
sample reads each known process's RSS alone. psutil's `children()` scans the whole table at
each call: called for every kind at every sample, it was 70 % of the bench's own process, which
took 12 % of a core from the pipeline step it was measuring (5.7 % since; docs/performance.md).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

SAMPLE_SECONDS = 0.25
TREE_SECONDS = 2.0
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


def trees(roots: dict[str, int]) -> dict[str, list[psutil.Process]]:
    """Each kind's root process and all its descendants, from one scan of the process table."""
    children: dict[int, list[psutil.Process]] = defaultdict(list)
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["ppid"]):
        found[process.pid] = process
        children[process.info["ppid"]].append(process)
    result: dict[str, list[psutil.Process]] = {}
    for kind, pid in roots.items():
        members = [found[pid]] if pid in found else []
        for member in members:  # grows as it goes: breadth first
            members.extend(children.get(member.pid, []))
        result[kind] = members
    return result


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            t = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def rss_bytes(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
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
        scanned: dict[str, list[psutil.Process]] = {}
        scanned_at, scanned_pids = 0.0, dict[str, int]()
        while not self._stop.wait(SAMPLE_SECONDS):
            with self._lock:
                pids = dict(self.pids)
            if pids != scanned_pids or time.monotonic() - scanned_at >= TREE_SECONDS:
                scanned, scanned_at, scanned_pids = trees(pids), time.monotonic(), pids
            for kind, processes in scanned.items():
                rss = rss_bytes(processes)
                with self._lock:
                    self.peak_rss[kind] = max(self.peak_rss.get(kind, 0), rss)
                    if self._phase_peak is not None:
                        self._phase_peak[kind] = max(self._phase_peak.get(kind, 0), rss)

    def cpu(self) -> dict[str, float]:
        with self._lock:
            pids = dict(self.pids)
        return {kind: cpu_seconds(processes) for kind, processes in trees(pids).items()}

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
