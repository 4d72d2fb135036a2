"""Critical batches get SQLite's single writer first; the other batches give it up for them.

SQLite lets one transaction write at a time, and a writer that finds it taken polls in growing
sleeps (1, 2, 5 … 100 ms). Left alone, a critical alert waits for whatever general batch holds
the writer to commit, then for its next poll. So the batch runner marks its transactions:

- `urgent()` (a queue with `QueueSpec.urgent`, the critical one) raises the *priority flag*
  first: a shared lock on the file `<database>-priority`, an open-file-description lock the
  kernel drops if the process dies. Its BEGIN IMMEDIATE is retried every 0.2 ms rather than
  in SQLite's steps (up to the database's `timeout`). The flag is lowered by `turn.release()`,
  which the runner registers as the transaction's first on-commit action (its broadcast comes
  after, with the flag down), or at the end of the block. Its commits never run SQLite's
  automatic checkpoint (copying the write-ahead log into the database, tens of milliseconds
  once SQLITE_WAL_AUTOCHECKPOINT pages have gathered): the next other commit does.
- `yielding()` (every other queue's batches) checks the flag before each statement it starts,
  BEGIN included. When the flag is up the statement fails, the transaction rolls back (giving
  up the writer), and `turn.preempted` says so: the runner waits until the flag is down
  (`wait_until_lowered`) and runs the batch again, whole. Nothing was committed, so nothing is
  done twice. (Not within a statement: a progress handler would run Python inside SQLite, where
  the soft time limit could then strike, and a hung statement must stay for the hard limit.)
  Between themselves, yielding transactions queue for the writer in the kernel: each takes an
  exclusive lock on `<database>-writer` just before its BEGIN and lets it go at commit
  (`turn.release()`, the runner's first on-commit action) or at the end of the block. A batch
  that finds the writer taken sleeps in that lock and is woken the moment the holder commits;
  in SQLite's own polling it slept on for up to a step (25 ms, then 50 and 100 ms), and the
  pipeline's two general workers, which the writer serialises, took 27-40 ms a batch to start
  writing instead of 14-23 (docs/performance.md).

A yielding transaction runs in a pool whose processes have the idle CPU policy (`SCHED_IDLE`,
the general one: QueueSpec.idle), which gives a core to any normal process first. Holding the
writer, it would wait for every one of them while the other general batches and the critical
alerts wait for it: its hold lasted 1.6 times its CPU time in the pipeline's rounds, against
1.3 times under the normal policy (docs/performance.md). So from its BEGIN to its commit (or
the end of the block) the thread runs under the normal policy at its pool's nice value, and
goes back to the idle policy after. Leaving `SCHED_IDLE` needs RLIMIT_NICE to allow the nice
value (`LimitNICE=+5` in deploy/systemd/celery@.service) or CAP_SYS_NICE; without either the
hold stays idle-policy, slower, and each pool process says so once in its log.

The bound this gives: a critical transaction never waits for a general batch to finish, only
for the statement it is running (a batch's statements take milliseconds) and its rollback. It
still waits for transactions that are neither (a NOC action, housekeeping in chunks), which are
short. Elsewhere than SQLite on Linux (PostgreSQL locks rows, not the database) both are no-ops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from django.db import OperationalError, connection

log = structlog.get_logger(__name__)

BEGIN_POLL_SECONDS = 0.0002
# struct flock on Linux: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
_FLOCK = "=hh4xqqi4x"
_SUPPORTED = hasattr(fcntl, "F_OFD_GETLK")


class Preempted(Exception):
    """A yielding transaction gave the writer up to a critical one."""


@dataclass
class Turn:
    preempted: bool = False  # a yielding transaction gave the writer up (and rolled back)
    # Lowers an urgent turn's flag, lets a yielding turn's writer lock go; idempotent.
    release: Callable[[], None] = lambda: None


def _database_path() -> str | None:
    """The SQLite database file, whose `-priority` and `-writer` files beside it hold the
    locks; None where there are none to take (another database, in memory, not Linux)."""
    if not _SUPPORTED or connection.vendor != "sqlite":
        return None
    name = str(connection.settings_dict["NAME"])
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return name


def _flag_path() -> str | None:
    database = _database_path()
    return None if database is None else f"{database}-priority"


def writer_path() -> str | None:
    """The file yielding transactions lock, one at a time, while they hold SQLite's writer."""
    database = _database_path()
    return None if database is None else f"{database}-writer"


def _lock(fd: int, command: int, kind: int) -> bytes:
    return fcntl.fcntl(fd, command, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 1, 0))


def _raised(fd: int) -> bool:
    """Whether a critical transaction holds the flag (asked without taking anything)."""
    answer = _lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK)
    kind: int = struct.unpack(_FLOCK, answer)[0]
    return kind != fcntl.F_UNLCK


@contextlib.contextmanager
def _open(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)  # drops the fd's lock, if any


@contextlib.contextmanager
def urgent() -> Iterator[Turn]:
    """Raise the flag for the transaction(s) run inside; begin them without coarse waits."""
    path = _flag_path()
    if path is None:
        yield Turn()
        return
    with _open(path) as fd:
        _lock(fd, fcntl.F_OFD_SETLKW, fcntl.F_RDLCK)

        def release() -> None:
            with contextlib.suppress(OSError):  # already lowered
                _lock(fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK)

        connection.ensure_connection()
        raw = connection.connection
        pages = int(raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        try:
            with connection.execute_wrapper(_begin_promptly):
                yield Turn(release=release)
        finally:
            if connection.connection is raw:  # else closed, or a new one with init_command's
                with contextlib.suppress(sqlite3.Error):  # never hide the turn's own error
                    raw.execute(f"PRAGMA wal_autocheckpoint = {pages}")


def _begin_promptly(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    if not sql.startswith("BEGIN"):
        return execute(sql, params, many, context)
    raw = connection.connection
    timeout = float(connection.settings_dict["OPTIONS"].get("timeout", 5))
    deadline = time.monotonic() + timeout
    raw.execute("PRAGMA wal_autocheckpoint = 0")  # until urgent() ends, after the commit
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                return execute(sql, params, many, context)
            except OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(BEGIN_POLL_SECONDS)
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")


@contextlib.contextmanager
def yielding() -> Iterator[Turn]:
    """Give the writer up, by failing the next statement, whenever the flag is raised; wait
    for it, in the kernel, while another yielding transaction holds it."""
    path, queue = _flag_path(), writer_path()
    turn = Turn()
    if path is None or queue is None:
        yield turn
        return
    # The policy goes back last, once the writer's file is closed (its lock let go) on a
    # rollback or a preemption; at commit, release() lets go first, then goes back.
    with _idle_policy_around(), _open(path) as fd, _open(queue) as writer:

        def release() -> None:
            with contextlib.suppress(OSError):  # already let go
                _lock(writer, fcntl.F_OFD_SETLK, fcntl.F_UNLCK)
            _back_to_idle_policy()

        turn.release = release

        def check(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: dict[str, Any]
        ) -> Any:
            begin = sql.startswith("BEGIN")
            if begin:  # a signal (the soft time limit) still interrupts this wait
                _lock(writer, fcntl.F_OFD_SETLKW, fcntl.F_WRLCK)
                _leave_idle_policy()
            # In the transaction (not in its on-commit actions, which follow the commit).
            in_transaction = begin or connection.in_atomic_block
            if in_transaction and _raised(fd):
                turn.preempted = True
                raise Preempted("a critical transaction wants the writer")
            return execute(sql, params, many, ctx)

        with connection.execute_wrapper(check):
            yield turn


# Whether this thread left the idle policy for a hold and has not gone back yet; per thread,
# not per block: a signal (the soft time limit) that cuts the way back short leaves it set, and
# the next block's start or end finishes it, so a pool process is never left off SCHED_IDLE.
_switched = threading.local()
_refused = False  # this process may not leave the idle policy: asked once, said once


def _leave_idle_policy() -> None:
    """The calling thread under the normal CPU policy (at its nice value), if it runs under
    the idle one: it has just taken the writer."""
    global _refused
    if _refused or getattr(_switched, "on", False) or os.sched_getscheduler(0) != os.SCHED_IDLE:
        return
    _switched.on = True  # first: a signal right after the change still finds it to undo
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except PermissionError:
        _switched.on = False
        _refused = True
        log.warning(
            "sqlite_writer_hold_stays_idle_policy",
            nice=os.nice(0),
            rlimit_nice=resource.getrlimit(resource.RLIMIT_NICE)[0],
            hint="allow this nice value by RLIMIT_NICE (systemd: LimitNICE=+5 in "
            "celery@.service) or grant CAP_SYS_NICE: the general batches hold SQLite's "
            "writer longer while every normal process runs first",
        )


def _back_to_idle_policy() -> None:
    if getattr(_switched, "on", False):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        _switched.on = False  # after: cut short before it, the next call does it


@contextlib.contextmanager
def _idle_policy_around() -> Iterator[None]:
    """Back to the idle policy at the block's start (a leftover) and at its very end, after
    the writer's lock is let go."""
    _back_to_idle_policy()
    try:
        yield
    finally:
        _back_to_idle_policy()


def wait_until_lowered() -> None:
    """Block until no critical transaction holds the flag (woken by the kernel, no polling)."""
    path = _flag_path()
    if path is None:
        return
    with _open(path) as fd:
        _lock(fd, fcntl.F_OFD_SETLKW, fcntl.F_WRLCK)
