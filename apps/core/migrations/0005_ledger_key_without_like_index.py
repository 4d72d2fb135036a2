"""The idempotency ledger's key without its `_like` twin on PostgreSQL.

Django gives every indexed `CharField` on PostgreSQL a second index, `<name>_like`
(`varchar_pattern_ops`), for `LIKE` queries. Nothing queries the ledger's keys that way, and
the ledger writes a key for every message: the twin cost about 112 B and a B-tree insertion a
message (docs/scaling.md). The unique index, which makes a claim a claim, stays. SQLite has no
such index: nothing to do there. The model is unchanged (`unique=True`): Django's own later
alterations of the field drop the twin `IF EXISTS`, so its absence is harmless.

`DROP INDEX` takes the table's lock for a moment, not for a rebuild.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

LIKE_INDEX_REBUILT = "core_processedmessage_key_like"  # the reverse's name for it


def _like_indexes(apps: Any, schema_editor: Any) -> list[str]:
    """The names of the pattern indexes on the ledger's key (one, as Django made it)."""
    table = apps.get_model("core", "ProcessedMessage")._meta.db_table
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return [
        name
        for name, found in constraints.items()
        if found["index"] and not found["unique"] and found["columns"] == ["key"]
        if name.endswith("_like")
    ]


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in _like_indexes(apps, schema_editor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql" or _like_indexes(apps, schema_editor):
        return
    table = apps.get_model("core", "ProcessedMessage")._meta.db_table
    quote = schema_editor.quote_name
    schema_editor.execute(
        f"CREATE INDEX {quote(LIKE_INDEX_REBUILT)} ON {quote(table)} "
        f"({quote('key')} varchar_pattern_ops)"
    )


class Migration(migrations.Migration):
    dependencies = [("core", "0004_idempotency_keys_time_first")]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
