"""NOC housekeeping on beat (schedule: celery_settings.BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken

from apps.core.retention import delete_before
from apps.core.tasks.celery_settings import PRUNE_EXPIRED_TOKENS


@shared_task(name=PRUNE_EXPIRED_TOKENS, acks_late=True)
def prune_expired_tokens() -> int:
    """Forget the refresh tokens past their expiry, blacklisted or not (hourly).

    Each login and refresh records one; an expired token is refused by its `exp` alone, so its
    row (and its blacklist entry, deleted with it) guards nothing any more.
    """
    return delete_before(OutstandingToken, "expires_at", timezone.now())
