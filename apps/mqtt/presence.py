"""Presence: when each device was last heard from, and ONLINE / OFFLINE with their alerts.

Every processed batch marks its devices seen (consumers/base.py); beat runs
`detect_offline_devices` every minute for the devices that went silent.

A device is expected to report every `report_interval` (its own, set in the admin or by
register_device), else as its kind does (DEVICE_REPORT_INTERVALS, else DEVICE_OFFLINE_AFTER).
A device of a kind that sends only events (DEVICE_EVENT_ONLY_KINDS: a panic button is silent
until pressed) is judged only once it has sent a heartbeat, a message of a kind the topic table
marks `heartbeat` (telemetry, system health): from then on it is known to report regularly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Case, DurationField, F, Q, Value, When
from django.db.models.functions import Coalesce
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


def mark_seen(seen: list[tuple[Device, datetime]], *, heartbeat: bool = False) -> list[Event]:
    """Record that devices were heard from (`heartbeat`: by a heartbeat): a new device is
    ONLINE, an OFFLINE one is back, its alert cleared and the commands that waited for it sent.
    The caller writes the devices' changed fields and announces their new status
    (consumers/base.py)."""
    back: list[tuple[Device, str]] = []
    for device, at in seen:
        if heartbeat and (device.last_heartbeat is None or at > device.last_heartbeat):
            device.last_heartbeat = at
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


def expected_interval() -> Coalesce:
    """How often a device is expected to report, as a query expression: its own interval, else
    its kind's; NULL (never judged) for a device of an event-only kind without a heartbeat."""
    by_kind = Case(
        *(
            When(kind=kind, then=Value(timedelta(seconds=seconds)))
            for kind, seconds in settings.DEVICE_REPORT_INTERVALS.items()
        ),
        default=Value(timedelta(seconds=settings.DEVICE_OFFLINE_AFTER)),
        output_field=DurationField(),
    )
    silent_by_nature = Q(kind__in=settings.DEVICE_EVENT_ONLY_KINDS, last_heartbeat=None)
    judged = Case(When(silent_by_nature, then=None), default=by_kind, output_field=DurationField())
    return Coalesce("report_interval", judged, output_field=DurationField())


@shared_task(name=DETECT_OFFLINE_DEVICES, acks_late=True)
def detect_offline_devices() -> int:
    """Devices silent past their expected interval go OFFLINE with an alert; how many did.

    Silent means nothing *received* for that long, while subscribers listened the whole time:
    a message still waiting in a queue, or in the broker while a subscriber was away, is not
    silence. After an outage a device is judged once intake has listened its whole interval.
    One query finds them, however large the fleet.
    """
    client = state_redis()
    now = timezone.now()
    connected = [s for s in intake_status.read_statuses(client) if s.connected]
    if intake_status.intake_paused(client) or not connected:
        # Devices are not silent when nobody is listening: no mass OFFLINE during an outage.
        log.warning("offline detection skipped: MQTT intake is paused or no subscriber is up")
        return 0
    listening_since = max(s.connected_since or now.timestamp() for s in connected)
    listened = now - datetime.fromtimestamp(listening_since, tz=UTC)
    events: list[Event] = []
    gone: list[Device] = []
    with transaction.atomic():
        candidates = list(
            Device.objects.annotate(interval=expected_interval())
            .filter(interval__lte=listened, last_seen__lt=now - F("interval"))
            .exclude(status=Device.Status.OFFLINE)
            .select_for_update(of=("self",))
        )
        heard = intake_status.last_received(client, [d.device_id for d in candidates])
        for device in candidates:
            if heard.get(device.device_id, 0.0) >= (now - device.interval).timestamp():
                continue  # received recently; its message is still on its way to the database
            events.append(mark_offline(device, now))
            gone.append(device)
            log.info("device offline", device_id=device.device_id, last_seen=str(device.last_seen))
        broadcast_on_commit(events + status_events(gone))
    return len(gone)
