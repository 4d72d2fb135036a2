"""SQLite's writer and its checkpoints (apps/core/write_priority.py): a critical transaction's
commit never copies the write-ahead log into the database; the next other commit does. General
batches queue for the writer in the kernel, and the next one starts at the last one's commit."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from django.db import connection, transaction

from apps.core import write_priority
from apps.core.envelope import Envelope
from apps.core.tasks import ledger
from tests.services import wait_for


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
