"""Writing some fields of many rows at once: one UPDATE by primary key, executed for each row.

Django's `bulk_update` builds a CASE expression per field over all the rows, and compiling it
cost a general worker more CPU than the writes themselves (a third of a telemetry batch of 100
devices, bench/profile_worker.py). The statement here is built once and the driver's
`executemany` runs it for every row. As with `bulk_update`: no `save()`, no signals, no
`auto_now` (set such fields yourself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Field, Model


def update_rows(rows: Sequence[Model], fields: Sequence[str]) -> None:
    """Write `fields` of each of `rows` (instances of one model) as they are on the objects."""
    if not rows:
        return
    meta = type(rows[0])._meta
    connection = connections[router.db_for_write(type(rows[0]))]
    columns = [_column(meta.get_field(name)) for name in fields]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(str(column.column))} = %s" for column in columns)
    table, key = quote(meta.db_table), quote(str(_column(meta.pk).column))
    sql = f"UPDATE {table} SET {assignments} WHERE {key} = %s"  # noqa: S608 - quoted model names
    params = [
        [column.get_db_prep_save(getattr(row, column.attname), connection) for column in columns]
        + [row.pk]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _column(field: object) -> Field[Any, Any]:
    if not isinstance(field, Field) or not field.concrete:
        raise ValueError(f"{field} is not a column")
    return field
