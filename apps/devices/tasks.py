"""Device housekeeping on beat (schedule: celery_settings.BEAT_SCHEDULE)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.core.retention import delete_before
from apps.core.tasks.celery_settings import PRUNE_READINGS
from apps.devices.models import GuardLocation, SensorReading, SystemHealthSample, TelemetryReading

READING_MODELS = (TelemetryReading, GuardLocation, SensorReading, SystemHealthSample)


@shared_task(name=PRUNE_READINGS, acks_late=True)
def prune_readings() -> int:
    """Forget readings received more than READING_RETENTION_DAYS ago (hourly, from beat).

    By the time they were received, not the device's clock, which may be wrong.
    """
    cutoff = timezone.now() - timedelta(days=settings.READING_RETENTION_DAYS)
    return sum(
        delete_before(model, "received_at", cutoff, follows_pk=True) for model in READING_MODELS
    )
