"""What tests do to the database behind the bus's back, on SQLite and PostgreSQL alike."""

from __future__ import annotations

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
