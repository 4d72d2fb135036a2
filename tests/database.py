"""What tests do to the database behind the bus's back, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

TABLE = "devices_telemetryreading"
# About how many steps of SQLite's counting query run in a second here: PostgreSQL sleeps as
# long, so that a reading takes the same time to insert on both.
STEPS_PER_SECOND = 5_000_000


@contextmanager
def slow_telemetry_inserts(
    name: str, when: str, steps: int | None, *, postgres_seconds: float | None = None
) -> Iterator[None]:
    """While inside, a telemetry reading for which `when` holds (SQL on NEW, a subquery allowed)
    takes time to insert, spent inside the database: `steps` of a counting query on SQLite (in
    C, where no Python exception such as a soft time limit reaches), as long asleep on
    PostgreSQL (or `postgres_seconds`); `steps=None`: for ever."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            seconds = 86_400 if steps is None else steps / STEPS_PER_SECOND
            seconds = postgres_seconds or seconds
            cursor.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {when} THEN PERFORM pg_sleep({seconds}); END IF; RETURN NEW; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {TABLE} "
                f"FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        else:
            limit = "" if steps is None else f" WHERE x < {steps}"
            count = f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c{limit})"  # noqa: S608
            body = f"SELECT count(*) FROM ({count} SELECT x FROM c)"  # noqa: S608
            cursor.execute(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {TABLE} WHEN {when} BEGIN {body}; END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {TABLE}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {name}()")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")


def hold_the_writer(seconds: float) -> subprocess.Popen[bytes]:
    """Another process holds the database's write lock for `seconds`: SQLite's EXCLUSIVE lock,
    or on PostgreSQL its EXCLUSIVE mode on every table (reads go on, writes wait), as SQLite's
    does in WAL mode."""
    from django.db import connection

    if connection.vendor == "postgresql":
        tables = ", ".join(map(connection.ops.quote_name, connection.introspection.table_names()))
        code = (
            "import os, time, psycopg\n"
            "c = psycopg.connect(os.environ['DATABASE_URL'])\n"
            f"c.execute({f'LOCK TABLE {tables} IN EXCLUSIVE MODE'!r})\n"
            "print('locked', flush=True)\n"
            f"time.sleep({seconds})\n"
            "c.rollback()\n"
        )
    else:
        path = os.environ["TEST_SQLITE_PATH"]
        code = (
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            f"time.sleep({seconds})\n"
            "c.execute('ROLLBACK')\n"
        )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"locked"
    return process
