"""Alert housekeeping on beat (schedule: celery_settings.BEAT_SCHEDULE)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.alerts.models import CLOSED_STATUSES, Alert
from apps.core.retention import delete_before
from apps.core.tasks.celery_settings import PRUNE_CLOSED_ALERTS


@shared_task(name=PRUNE_CLOSED_ALERTS, acks_late=True)
def prune_closed_alerts() -> int:
    """Forget alerts closed more than ALERT_RETENTION_DAYS ago, with their history (hourly).

    An active alert is never pruned, however old.
    """
    cutoff = timezone.now() - timedelta(days=settings.ALERT_RETENTION_DAYS)
    return delete_before(Alert, "resolved_at", cutoff, status__in=CLOSED_STATUSES)
