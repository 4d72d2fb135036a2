"""The files of PROMETHEUS_MULTIPROC_DIR, and what becomes of a process's files once it is gone.

Each process writes `<kind>_<pid>.db` (kind: `counter`, `histogram`, `summary`, `gauge_<mode>`)
and a scrape sums every `*.db` there. Pool children are replaced after a number of tasks, so the
files of dead processes would pile up and every scrape would read them all. Once a process is
gone (its pool child exits: `forget_process`; a scrape finds its pid no longer running:
`ArchivingCollector`), its files are folded into one archive per kind, `<kind>_archive.db`, and
deleted. A scrape then shows exactly what it showed before, so counters stay monotonic:

- counters, histograms, summaries and `sum` gauges are added to the archive; `max`, `min` and
  `mostrecent` gauges keep the larger, smaller or newer value, as prometheus_client does across
  processes alive or dead;
- `all` gauges (a series per pid) and `live*` gauges (living processes only) are dropped.

Crash safety, the rule: a merge is applied whole, once, or not at all. It first writes the new
archives as `<kind>_archive.db.next` (a scrape reads only `*.db`), then commits by renaming a
journal into place, `merge.journal`: which `.next` replaces which archive, which dead files go.
Only then are the archives renamed over, the dead files deleted and the journal removed. Each of
those steps can be repeated harmlessly, so whoever takes the lock next finishes a journal it
finds, before anything reads the files; `.next` files without a journal were never committed and
are deleted. A lost count would look like a counter reset to Prometheus, a double one like a
burst: neither can happen.

One merge at a time, and no scrape during one: both hold `merge.lock` (flock) in the directory.

An empty file holds nothing yet: prometheus_client creates a process's file and sizes it a
moment later, and a process killed (SIGKILL) between the two leaves it empty for good. Its
reader fails on one (prometheus/client_python#1199, unreleased in 0.26), and every scrape with
it; here it is read as no values (`recorded`, `_read`) and deleted with its dead process's files.
"""

from __future__ import annotations

import fcntl
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from prometheus_client import multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

from apps.core.metrics import PROCESSES_ARCHIVED

LOCK = "merge.lock"
JOURNAL = "merge.journal"
ARCHIVE = "archive"  # in place of a pid: `counter_archive.db`
STAGED_SUFFIX = ".next"

Value = tuple[float, float]  # (value, timestamp), as MmapedDict stores them


def _add(archived: Value, dead: Value) -> Value:
    return archived[0] + dead[0], max(archived[1], dead[1])


def _larger(archived: Value, dead: Value) -> Value:
    return max(archived, dead)


def _smaller(archived: Value, dead: Value) -> Value:
    return min(archived, dead)


def _newer(archived: Value, dead: Value) -> Value:
    return dead if dead[1] > archived[1] else archived


# How a dead process's value joins the archive's, by kind; files of other kinds are dropped.
COMBINE: dict[str, Callable[[Value, Value], Value]] = {
    "counter": _add,
    "histogram": _add,
    "summary": _add,
    "gauge_sum": _add,
    "gauge_max": _larger,
    "gauge_min": _smaller,
    "gauge_mostrecent": _newer,
}


def forget_process(directory: Path, pid: int) -> None:
    """Fold the files of a process that is gone, or done: a pool child calls it for itself as it
    exits, after its last task (anything recorded later would be lost, never counted twice)."""
    with _locked(directory):
        finish_merge(directory)
        _merge(directory, {pid})


class ArchivingCollector(Collector):
    """Every process's metrics in the directory, after folding in those of dead processes.

    It catches the processes that died without saying so (SIGKILL, a crash, a main process).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        with _locked(self.directory):
            finish_merge(self.directory)
            dead = {pid for pid in _files_by_pid(self.directory) if not psutil.pid_exists(pid)}
            _merge(self.directory, dead)
            return recorded(self.directory)


def recorded(directory: Path, pattern: str = "*.db") -> list[Metric]:
    """The metrics of the files in `directory` (those `pattern` matches: one process's, say),
    summed as prometheus_client sums them, without folding anything; empty files (a process's
    file not yet sized) hold nothing."""
    files = [str(path) for path in directory.glob(pattern) if not _empty(path)]
    return list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:  # folded and deleted since the listing
        return True


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _files_by_pid(directory: Path) -> dict[int, list[Path]]:
    files: dict[int, list[Path]] = defaultdict(list)
    for path in directory.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit():
            files[int(pid)].append(path)
    return files


def _merge(directory: Path, pids: Collection[int]) -> None:
    files = {pid: paths for pid, paths in _files_by_pid(directory).items() if pid in pids}
    if not files:
        return
    # Counted before the files are read: a pool child folding its own files counts itself in.
    PROCESSES_ARCHIVED.inc(len(files))
    commit_merge(directory, [path for paths in files.values() for path in paths])
    finish_merge(directory)


def commit_merge(directory: Path, dead_files: list[Path]) -> None:
    """Write the new archives aside, then commit them with the journal (the lock is held)."""
    replace: dict[str, str] = {}
    for kind, combine in COMBINE.items():
        sources = [path for path in dead_files if path.stem.rpartition("_")[0] == kind]
        if not sources:
            continue
        archive = directory / f"{kind}_{ARCHIVE}.db"
        merged = _read(archive) if archive.exists() else {}
        for source in sources:
            for key, value in _read(source).items():
                merged[key] = combine(merged[key], value) if key in merged else value
        staged = archive.with_name(archive.name + STAGED_SUFFIX)
        _write(staged, merged)
        replace[staged.name] = archive.name
    journal = {"replace": replace, "delete": [path.name for path in dead_files]}
    pending = directory / f"{JOURNAL}.tmp"
    pending.write_text(json.dumps(journal))
    pending.replace(directory / JOURNAL)  # the commit point


def finish_merge(directory: Path) -> None:
    """Carry out a committed merge, or drop an uncommitted one; safe to repeat at any step."""
    journal_path = directory / JOURNAL
    if journal_path.exists():
        journal = json.loads(journal_path.read_text())
        for staged, archive in journal["replace"].items():
            if (directory / staged).exists():
                (directory / staged).replace(directory / archive)
        for name in journal["delete"]:
            (directory / name).unlink(missing_ok=True)
        journal_path.unlink()
    for leftover in (*directory.glob(f"*{STAGED_SUFFIX}"), directory / f"{JOURNAL}.tmp"):
        leftover.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Value]:
    if _empty(path):
        return {}
    values = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
    return {key: (value, timestamp) for key, value, timestamp, _ in values}


def _write(path: Path, values: dict[str, Value]) -> None:
    path.unlink(missing_ok=True)
    store = MmapedDict(str(path))  # type: ignore[no-untyped-call]
    try:
        for key, (value, timestamp) in values.items():
            store.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        store.close()  # type: ignore[no-untyped-call]
