"""Core housekeeping on beat (schedule: celery_settings.BEAT_SCHEDULE)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.core import outbox
from apps.core.models import DeadLetter
from apps.core.retention import delete_before
from apps.core.tasks.celery_settings import PRUNE_DEAD_LETTERS, RESEND_BROADCASTS


@shared_task(name=PRUNE_DEAD_LETTERS, acks_late=True)
def prune_dead_letters() -> int:
    """Forget dead letters older than DEAD_LETTER_RETENTION_DAYS (hourly, from beat)."""
    cutoff = timezone.now() - timedelta(days=settings.DEAD_LETTER_RETENTION_DAYS)
    return delete_before(DeadLetter, "created_at", cutoff, follows_pk=True)


@shared_task(name=RESEND_BROADCASTS, acks_late=True)
def resend_broadcasts() -> dict[str, int]:
    """Resend NOC events whose sending was never confirmed; forget those sent (beat, 15 s)."""
    return outbox.resend(settings.BROADCAST_RESEND_AFTER_SECONDS)
