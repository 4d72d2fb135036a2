"""Idempotency keys with a device message id, time first (core.envelope.message_key).

`<topic>#<msg_id>@<time>` becomes `<time>|<topic>#<msg_id>`: the same parts, so a message
delivered again after the upgrade still finds its key, and the ledger's unique index takes new
keys near its end. One UPDATE for the keys whose time has its usual 23 characters, then any
other former key one by one (none can pass intake today: a year before 1000 is refused as
stale). A message claimed in both forms (a worker of the new release ran before this
migration) keeps the one claim in today's form. Digest keys (`sha256:...`) stay as they are.
Readings keep the key they were stored with: only the ledger is looked up by key.

Stop every worker and subscriber of the earlier release before it runs (`make run` migrates
before it starts the services): one still running would go on claiming keys in the former
form, which a redelivery in today's form would not find (docs/reliability.md).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations


def _current(key: str) -> str:
    """core.envelope.current_key as of this migration (copied: a migration must not change)."""
    head, hash_sign, rest = key.partition("#")
    if not hash_sign or "|" in head:
        return key
    msg_id, at, device_time = rest.rpartition("@")
    return f"{device_time}|{head}#{msg_id}" if at else key


def _former(key: str) -> str:
    """Today's key back in its former form (for the reverse migration)."""
    head, bar, rest = key.partition("|")
    topic_and_id = rest if bar and "#" in rest and "#" not in head else ""
    return f"{topic_and_id}@{head}" if topic_and_id else key


def _rewrite(apps: Any, schema_editor: Any, convert: Any, sql: dict[str, tuple[str, str]]) -> None:
    model = apps.get_model("core", "ProcessedMessage")
    connection = schema_editor.connection
    table = connection.ops.quote_name(model._meta.db_table)
    statement, leftover = sql.get(connection.vendor, ("", "1 = 1"))
    with connection.cursor() as cursor:
        if statement:
            cursor.execute(statement.format(table=table))  # noqa: S608 (constants)
        # What the statement could not rewrite (or every row, on another database), in Python.
        cursor.execute(f"SELECT id, key FROM {table} WHERE {leftover}")  # noqa: S608
        rows = cursor.fetchall()
    for pk, key in rows:
        converted = convert(key)
        if converted == key:
            continue
        if model.objects.filter(key=converted).exists():  # claimed in both forms: one claim
            model.objects.filter(pk=pk).delete()
        else:
            model.objects.filter(pk=pk).update(key=converted)


def forward(apps: Any, schema_editor: Any) -> None:
    _rewrite(apps, schema_editor, _current, FORWARD_SQL)


def backward(apps: Any, schema_editor: Any) -> None:
    _rewrite(apps, schema_editor, _former, BACKWARD_SQL)


# `<topic>#<msg_id>@<time of 23 characters, ending in Z>` -> `<time>|<topic>#<msg_id>`, unless
# that key is claimed already; then the rows still in the former form (a "#", an "@" after it,
# no "|" before it), if any. The numbers: the time (23) and the "@" or "|" beside it (24).
FORWARD_SQL = {
    "sqlite": (
        "UPDATE {table} SET key = substr(key, -23) || '|' || substr(key, 1, length(key) - 24) "
        "WHERE substr(key, -24, 1) = '@' AND substr(key, -1) = 'Z' "
        "AND instr(substr(key, -23), '@') = 0 "
        "AND instr(key, '#') > 0 AND instr(substr(key, 1, instr(key, '#')), '|') = 0 "
        "AND NOT EXISTS (SELECT 1 FROM {table} AS claimed WHERE claimed.key = "
        "substr({table}.key, -23) || '|' || substr({table}.key, 1, length({table}.key) - 24))",
        "instr(key, '#') > 0 AND instr(substr(key, instr(key, '#')), '@') > 0 "
        "AND instr(substr(key, 1, instr(key, '#')), '|') = 0",
    ),
    "postgresql": (
        "UPDATE {table} SET key = right(key, 23) || '|' || left(key, length(key) - 24) "
        "WHERE substr(key, length(key) - 23, 1) = '@' AND right(key, 1) = 'Z' "
        "AND strpos(right(key, 23), '@') = 0 "
        "AND strpos(key, '#') > 0 AND strpos(left(key, strpos(key, '#')), '|') = 0 "
        "AND NOT EXISTS (SELECT 1 FROM {table} AS claimed WHERE claimed.key = "
        "right({table}.key, 23) || '|' || left({table}.key, length({table}.key) - 24))",
        "strpos(key, '#') > 0 AND strpos(substr(key, strpos(key, '#')), '@') > 0 "
        "AND strpos(left(key, strpos(key, '#')), '|') = 0",
    ),
}
# And back: the keys written time first.
BACKWARD_SQL = {
    "sqlite": (
        "UPDATE {table} SET key = substr(key, 25) || '@' || substr(key, 1, 23) "
        "WHERE substr(key, 24, 1) = '|' AND instr(key, '#') > 24 "
        "AND NOT EXISTS (SELECT 1 FROM {table} AS claimed WHERE claimed.key = "
        "substr({table}.key, 25) || '@' || substr({table}.key, 1, 23))",
        "instr(key, '|') > 0 AND instr(key, '|') < instr(key, '#')",
    ),
    "postgresql": (
        "UPDATE {table} SET key = substr(key, 25) || '@' || left(key, 23) "
        "WHERE substr(key, 24, 1) = '|' AND strpos(key, '#') > 24 "
        "AND NOT EXISTS (SELECT 1 FROM {table} AS claimed WHERE claimed.key = "
        "substr({table}.key, 25) || '@' || left({table}.key, 23))",
        "strpos(key, '|') > 0 AND strpos(key, '|') < strpos(key, '#')",
    ),
}


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0003_broadcast_outbox"),
    ]

    operations = [migrations.RunPython(forward, backward, elidable=False)]
