"""SQLite's writer and its checkpoints (apps/core/write_priority.py): a critical transaction's
commit never copies the write-ahead log into the database; the next other commit does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.db import connection, transaction

from apps.core import write_priority
from apps.core.envelope import Envelope
from apps.core.tasks import ledger


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
