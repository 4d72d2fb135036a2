"""The idempotency ledger: which messages' effects are committed (core.models.ProcessedMessage).

A batch claims its keys in the same transaction as its effects, so either both exist or neither
does, whatever crashes in between; a redelivered message finds its key and changes nothing.
Keys are forgotten after IDEMPOTENCY_RETENTION_DAYS, hourly, by beat.
"""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.core.bulk import insert_rows
from apps.core.envelope import Envelope
from apps.core.models import ProcessedMessage
from apps.core.tasks.celery_settings import PRUNE_PROCESSED_MESSAGES


def claim(kind: str, envelopes: list[Envelope]) -> list[Envelope]:
    """The envelopes never processed before (each key once), now recorded as processed.

    Call it inside the transaction that applies their effects.
    """
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
    """Forget idempotency keys older than IDEMPOTENCY_RETENTION_DAYS (hourly, from beat)."""
    cutoff = timezone.now() - timedelta(days=settings.IDEMPOTENCY_RETENTION_DAYS)
    deleted, _ = ProcessedMessage.objects.filter(processed_at__lt=cutoff).delete()
    return deleted
