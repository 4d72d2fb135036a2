"""Periodic device housekeeping (Celery beat; schedule in celery_settings.BEAT_SCHEDULE)."""

from __future__ import annotations

from datetime import timedelta

import structlog
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.redis_client import state_redis
from apps.devices.models import Device
from apps.devices.status import mark_offline
from apps.mqtt import status
from apps.noc.broadcast import NocEvent, broadcast_events

log = structlog.get_logger(__name__)


@shared_task(name="apps.devices.tasks.detect_offline_devices", acks_late=True)
def detect_offline_devices() -> int:
    """Devices silent for DEVICE_OFFLINE_AFTER seconds go OFFLINE with an alert."""
    client = state_redis()
    if status.intake_paused(client) or not any(s.connected for s in status.read_statuses(client)):
        # Devices are not silent when nobody is listening: no mass OFFLINE during an outage.
        log.warning("offline detection skipped: MQTT intake is paused or no subscriber is up")
        return 0
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.DEVICE_OFFLINE_AFTER)
    events: list[NocEvent] = []
    with transaction.atomic():
        silent = Device.objects.filter(last_seen__lt=cutoff).exclude(status=Device.Status.OFFLINE)
        for device in silent.select_for_update():
            events.extend(mark_offline(device, now))
            log.info("device offline", device_id=device.device_id, last_seen=str(device.last_seen))
        transaction.on_commit(lambda: broadcast_events(events))
    return len(events) // 2
