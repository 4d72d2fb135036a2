"""Presence: when each device was last heard from, and ONLINE / OFFLINE with their alerts.

Every processed batch marks its devices seen (consumers/base.py); beat runs
`detect_offline_devices` every minute for the devices that went silent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, clear_alerts, raise_alert
from apps.core import intake_status
from apps.core.events import Event
from apps.core.outbox import broadcast_on_commit
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import DETECT_OFFLINE_DEVICES
from apps.devices.commands import send_on_commit, waiting_for
from apps.devices.models import Device
from apps.devices.services import status_events

log = structlog.get_logger(__name__)


def mark_seen(seen: list[tuple[Device, datetime]]) -> list[Event]:
    """Record that devices were heard from: a new device is ONLINE, an OFFLINE one is back,
    its alert cleared and the commands that waited for it sent. The caller writes the devices'
    changed fields and announces their new status (consumers/base.py)."""
    back: list[tuple[Device, str]] = []
    for device, at in seen:
        if device.last_seen is not None and at <= device.last_seen:
            continue
        device.last_seen = at
        if device.status == Device.Status.UNKNOWN:
            device.status = Device.Status.ONLINE
        elif device.status == Device.Status.OFFLINE:
            device.status = Device.Status.ONLINE
            back.append((device, "device reported again"))
    if back:
        send_on_commit(waiting_for(device for device, _ in back))
    return clear_alerts(AlertType.OFFLINE, back)


def mark_offline(device: Device, now: datetime) -> Event:
    """Make the device OFFLINE and raise its alert; the caller announces the new status."""
    device.status = Device.Status.OFFLINE
    device.save(update_fields=["status"])
    signal = AlertSignal(
        device=device,
        alert_type=AlertType.OFFLINE,
        severity=Severity.MEDIUM,
        seen_at=now,
        message=(
            f"no message since {device.last_seen:%Y-%m-%d %H:%M:%S} UTC"
            if device.last_seen
            else "never heard from"
        ),
    )
    return raise_alert(signal)


@shared_task(name=DETECT_OFFLINE_DEVICES, acks_late=True)
def detect_offline_devices() -> int:
    """Devices silent for DEVICE_OFFLINE_AFTER seconds go OFFLINE with an alert; how many did.

    Silent means nothing *received* for that long, while subscribers listened the whole time:
    a message still waiting in a queue, or in the broker while a subscriber was away, is not
    silence. After an outage detection waits until intake has listened a full period again.
    """
    client = state_redis()
    window = timedelta(seconds=settings.DEVICE_OFFLINE_AFTER)
    now = timezone.now()
    cutoff = now - window
    connected = [s for s in intake_status.read_statuses(client) if s.connected]
    if intake_status.intake_paused(client) or not connected:
        # Devices are not silent when nobody is listening: no mass OFFLINE during an outage.
        log.warning("offline detection skipped: MQTT intake is paused or no subscriber is up")
        return 0
    listening_since = max(s.connected_since or now.timestamp() for s in connected)
    if listening_since > cutoff.timestamp():
        log.info(
            "offline detection waits: intake has not listened a whole period yet",
            listening_s=round(now.timestamp() - listening_since),
            period_s=settings.DEVICE_OFFLINE_AFTER,
        )
        return 0
    events: list[Event] = []
    gone: list[Device] = []
    with transaction.atomic():
        candidates = list(
            Device.objects.filter(last_seen__lt=cutoff)
            .exclude(status=Device.Status.OFFLINE)
            .select_for_update()
        )
        heard = intake_status.last_received(client, [d.device_id for d in candidates])
        for device in candidates:
            if heard.get(device.device_id, 0.0) >= cutoff.timestamp():
                continue  # received recently; its message is still on its way to the database
            events.append(mark_offline(device, now))
            gone.append(device)
            log.info("device offline", device_id=device.device_id, last_seen=str(device.last_seen))
        broadcast_on_commit(events + status_events(gone))
    return len(gone)
