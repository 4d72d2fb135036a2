"""The idempotency ledger: which messages' effects are committed (core.models.ProcessedMessage).

A batch claims its keys in the same transaction as its effects, so either both exist or neither
does, whatever crashes in between; a redelivered message finds its key and changes nothing.
Keys are forgotten after IDEMPOTENCY_RETENTION_DAYS, hourly, by beat.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
from celery import shared_task
from django.conf import settings
from django.db import connections, router
from django.utils import timezone

from apps.core.bulk import insert_rows
from apps.core.envelope import Envelope
from apps.core.isotime import naive_utc_text
from apps.core.models import ProcessedMessage
from apps.core.retention import delete_before
from apps.core.tasks.celery_settings import PRUNE_PROCESSED_MESSAGES

FIELDS = ("key", "kind", "processed_at")
_json = msgspec.json.Encoder()


def claim(kind: str, envelopes: list[Envelope]) -> list[Envelope]:
    """The envelopes never processed before (each key once), now recorded as processed.

    Call it inside the transaction that applies their effects.
    """
    connection = connections[router.db_for_write(ProcessedMessage)]
    # One statement: insert every key, skip those already there, return those inserted. On
    # PostgreSQL a key another transaction is inserting makes this one wait for its outcome:
    # two workers holding one message (a redelivery) never both claim it, nor fail on it.
    if connection.vendor == "sqlite":
        source = "SELECT value, %s, %s FROM json_each(%s) WHERE true"  # WHERE: SQLite's upsert
        keys: str | list[str] = _json.encode([envelope.key for envelope in envelopes]).decode()
        now: str | datetime = naive_utc_text(timezone.now())
    elif connection.vendor == "postgresql":
        source = "SELECT k, %s, %s FROM unnest(%s::text[]) AS k"
        keys, now = [envelope.key for envelope in envelopes], timezone.now()
    else:
        return _claim_portably(kind, envelopes)
    meta, quote = ProcessedMessage._meta, connection.ops.quote_name
    columns = {field.name: quote(str(field.column)) for field in meta.concrete_fields}
    key, kind_column, processed_at = (columns[name] for name in FIELDS)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({key}, {kind_column}, {processed_at}) "
        f"{source} ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [kind, now, keys])
        claimed = {row[0] for row in cursor.fetchall()}
    fresh: list[Envelope] = []
    for envelope in envelopes:
        if envelope.key in claimed:
            claimed.discard(envelope.key)  # a key twice in the batch: its first message
            fresh.append(envelope)
    return fresh


def _claim_portably(kind: str, envelopes: list[Envelope]) -> list[Envelope]:
    seen = set(
        ProcessedMessage.objects.filter(key__in={e.key for e in envelopes}).values_list(
            "key", flat=True
        )
    )
    fresh: list[Envelope] = []
    for envelope in envelopes:
        if envelope.key not in seen:
            seen.add(envelope.key)
            fresh.append(envelope)
    now = timezone.now()  # processed_at is auto_now_add, which insert_rows leaves to us
    insert_rows(
        ProcessedMessage, [{"key": e.key, "kind": kind, "processed_at": now} for e in fresh]
    )
    return fresh


def release(key: str) -> None:
    """Forget a key whose effects were never applied (a dead letter about to be replayed)."""
    ProcessedMessage.objects.filter(key=key).delete()


@shared_task(name=PRUNE_PROCESSED_MESSAGES, acks_late=True)
def prune_processed_messages() -> int:
    """Forget idempotency keys older than IDEMPOTENCY_RETENTION_DAYS (hourly, from beat), in
    short chunks: an hour of keys at 1,000 msg/s is 3.6 million rows, too many for one
    transaction beside the processing tasks."""
    cutoff = timezone.now() - timedelta(days=settings.IDEMPOTENCY_RETENTION_DAYS)
    return delete_before(ProcessedMessage, "processed_at", cutoff, follows_pk=True)
