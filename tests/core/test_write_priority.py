"""SQLite's writer and its checkpoints (apps/core/write_priority.py): a critical transaction's
commit never copies the write-ahead log into the database; the next other commit does. General
batches queue for the writer in the kernel, and the next one starts at the last one's commit."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import structlog
from django.db import connection, transaction

from apps.core import write_priority
from apps.core.envelope import Envelope
from apps.core.tasks import ledger
from tests.services import wait_for

T = TypeVar("T")


def _envelopes(prefix: str, count: int) -> list[Envelope]:
    return [
        Envelope(f"{prefix}-{n}", "device/d-1/telemetry", "d-1", "telemetry", {}, 0.0)
        for n in range(count)
    ]


def _contents(database: str) -> str:
    """A digest of the database file, which in WAL mode only a checkpoint writes. Not its
    size: a checkpoint may fill pages an earlier test freed and leave the size unchanged."""
    return hashlib.sha256(Path(database).read_bytes()).hexdigest()


def _autocheckpoint() -> int:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        return int(cursor.fetchone()[0])


def test_connections_checkpoint_at_the_configured_number_of_pages(db: None) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("a setting of SQLite's write-ahead log")
    from django.conf import settings

    assert _autocheckpoint() == settings.SQLITE_WAL_AUTOCHECKPOINT


def test_a_critical_commit_leaves_the_checkpoint_to_the_next_other_commit(
    transactional_db: None,
) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL has no write-ahead log checkpoints of its own to run")
    connection.ensure_connection()
    connection.connection.execute("PRAGMA wal_autocheckpoint = 1")  # any commit would copy
    database = str(connection.settings_dict["NAME"])
    before = _contents(database)

    with write_priority.urgent(), transaction.atomic():
        assert len(ledger.claim("alerts", _envelopes("critical", 3000))) == 3000
    assert _contents(database) == before, "the critical commit ran a checkpoint"
    assert _autocheckpoint() == 1, "the connection's own setting came back after the turn"

    with transaction.atomic():
        ledger.claim("telemetry", _envelopes("general", 1))
    assert _contents(database) != before, "the next commit did not run the checkpoint"


def _waited_for(path: str) -> bool:
    """Whether a process or thread sleeps in the kernel for a lock on `path`: the `->` lines
    of /proc/locks (`<n>: -> OFDLCK ADVISORY WRITE -1 <major>:<minor>:<inode> <start> <end>`)."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[-3].endswith(f":{inode}"):
            return True
    return False


def test_a_general_batch_waits_for_the_writer_in_the_kernel_and_begins_at_the_holders_commit(
    transactional_db: None,
) -> None:
    """Not in SQLite's busy polling, which sleeps on for up to 100 ms after the writer is free:
    the second batch sleeps in the lock on `<database>-writer` and has begun once the first
    committed, while the first's turn (its broadcast, in the runner) is not over yet."""
    path = write_priority.writer_path()
    if path is None:
        pytest.skip("PostgreSQL locks rows: no single writer to queue for")
    begun = threading.Event()
    committed: list[str] = []

    def second_batch() -> None:
        try:
            with write_priority.yielding() as turn, transaction.atomic():
                transaction.on_commit(turn.release)
                begun.set()
                ledger.claim("telemetry", _envelopes("second", 1))
            committed.append("second")
        finally:
            connection.close()

    second = threading.Thread(target=second_batch)
    with write_priority.yielding() as turn:
        with transaction.atomic():
            transaction.on_commit(turn.release)  # as the batch runner registers it, first
            ledger.claim("telemetry", _envelopes("first", 1))
            second.start()
            wait_for(lambda: _waited_for(path), timeout=10, what="the second batch to wait")
            assert not begun.is_set(), "the second batch began while the first held the writer"
        committed.append("first")
        second.join(timeout=10)  # still in the first's turn: the lock went with the commit
        assert not second.is_alive(), "the writer was not let go at commit"
        assert begun.is_set()
    assert committed == ["first", "second"]
    assert ledger.claim("telemetry", _envelopes("second", 1)) == []


def _in_an_idle_thread(work: Callable[[], T]) -> T:
    """`work` run in a new thread under the idle CPU policy, as a general pool's processes run
    (the policy is the thread's own: this one's is left as it was)."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            results.append(work())
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the idle-policy thread did not finish"
    if errors:
        raise errors[0]
    return results[0]


class _Failed(Exception):
    pass


def _may_leave_the_idle_policy() -> bool:
    """Whether a thread of this process may go from the idle policy back to the normal one
    (CAP_SYS_NICE, or an RLIMIT_NICE that allows its nice value), tried in a throwaway thread."""

    def attempt() -> bool:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except PermissionError:
            return False
        return True

    return _in_an_idle_thread(attempt)


@pytest.fixture
def writer_held(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's single writer to hold, and a process that has not been refused the normal
    policy yet (the refusal is remembered per process)."""
    if write_priority.writer_path() is None:
        pytest.skip("PostgreSQL locks rows: no single writer held")
    monkeypatch.setattr(write_priority, "_refused", False)


@pytest.fixture
def may_leave_idle(writer_held: None) -> None:
    if not _may_leave_the_idle_policy():
        pytest.skip("this process may not leave SCHED_IDLE (no CAP_SYS_NICE, RLIMIT_NICE too low)")


def _batch(seen: dict[str, int], label: str, *, fail: bool = False) -> None:
    """One general batch (a claim) in its turn, as the batch runner runs it, noting the
    thread's CPU policy before its BEGIN, while it holds the writer and at its broadcast (an
    on-commit action after the release); `fail`: the block fails, rolled back."""
    with write_priority.yielding() as turn:
        seen[f"{label}: before"] = os.sched_getscheduler(0)
        with transaction.atomic():
            transaction.on_commit(turn.release)
            transaction.on_commit(
                lambda: seen.update({f"{label}: broadcast": os.sched_getscheduler(0)})
            )
            ledger.claim("telemetry", _envelopes(label, 1))
            seen[f"{label}: holding"] = os.sched_getscheduler(0)
            if fail:
                raise _Failed("the batch fails: rolled back, never committed")


def test_a_general_batch_holds_the_writer_under_the_normal_cpu_policy_and_goes_back_after(
    may_leave_idle: None,
) -> None:
    """An idle-policy batch would wait, holding the writer, for every normal process; it holds
    it under the normal policy, and is idle again from its commit (before its broadcast), or
    from the end of a failed block."""

    def batches() -> dict[str, int]:
        seen: dict[str, int] = {}
        _batch(seen, "committed")
        seen["committed: after"] = os.sched_getscheduler(0)
        with contextlib.suppress(_Failed):
            _batch(seen, "failed", fail=True)
        seen["failed: after"] = os.sched_getscheduler(0)
        return seen

    idle, normal = os.SCHED_IDLE, os.SCHED_OTHER
    assert _in_an_idle_thread(batches) == {
        "committed: before": idle,
        "committed: holding": normal,
        "committed: broadcast": idle,
        "committed: after": idle,
        "failed: before": idle,
        "failed: holding": normal,
        "failed: after": idle,
    }


def test_a_process_that_may_not_leave_the_idle_policy_holds_the_writer_idle_and_says_so_once(
    writer_held: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.sched_setscheduler

    def unprivileged(pid: int, policy: int, param: os.sched_param) -> None:
        if policy != os.SCHED_IDLE:  # as the kernel answers without RLIMIT_NICE or CAP_SYS_NICE
            raise PermissionError(1, "Operation not permitted")
        real(pid, policy, param)

    monkeypatch.setattr(os, "sched_setscheduler", unprivileged)

    def batches() -> set[int]:
        seen: dict[str, int] = {}
        _batch(seen, "first")
        _batch(seen, "second")
        return set(seen.values())

    with structlog.testing.capture_logs() as logs:
        assert _in_an_idle_thread(batches) == {os.SCHED_IDLE}
    warned = [entry for entry in logs if entry["event"] == "sqlite_writer_hold_stays_idle_policy"]
    assert len(warned) == 1, logs
    assert "LimitNICE" in warned[0]["hint"]


def test_a_way_back_to_the_idle_policy_cut_short_is_finished_by_the_next_batch(
    may_leave_idle: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal (the soft time limit) may strike just before the thread goes back to the idle
    policy, at the commit and again at the block's end: the pool process must not stay under
    the normal policy for its remaining tasks."""
    real = os.sched_setscheduler
    strikes = [0]  # ways back to cut short, as a signal just before the call would

    def struck(pid: int, policy: int, param: os.sched_param) -> None:
        if policy == os.SCHED_IDLE and strikes[0] > 0:
            strikes[0] -= 1
            raise _Failed("the soft time limit")
        real(pid, policy, param)

    monkeypatch.setattr(os, "sched_setscheduler", struck)

    def batches() -> dict[str, int]:
        seen: dict[str, int] = {}
        strikes[0] = 2  # at the commit and at the block's end
        with contextlib.suppress(_Failed):
            _batch(seen, "struck")
        seen["struck: after"] = os.sched_getscheduler(0)
        _batch(seen, "next")
        seen["next: after"] = os.sched_getscheduler(0)
        return seen

    idle, normal = os.SCHED_IDLE, os.SCHED_OTHER
    assert _in_an_idle_thread(batches) == {
        "struck: before": idle,
        "struck: holding": normal,
        "struck: after": normal,  # both ways back cut short
        "next: before": idle,
        "next: holding": normal,
        "next: broadcast": idle,
        "next: after": idle,
    }
