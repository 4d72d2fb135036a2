"""Raising, repeating, clearing and moving alerts through their lifecycle.

Every function returns the NOC event describing the change (apps/core/events.py), for the
caller to broadcast after its transaction commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import F
from django.utils import timezone

from apps.alerts.models import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    CLOSED_STATUSES,
    Alert,
    AlertStatus,
    AlertTransition,
    AlertType,
    Severity,
)
from apps.core.events import Event, EventType
from apps.devices.models import Device
from apps.tenants.models import User

# Most severe first.
SEVERITY_RANK = {severity: rank for rank, severity in enumerate(Severity.values)}


class TransitionError(ValueError):
    pass


@dataclass(frozen=True)
class AlertSignal:
    """Something a device or a rule says is wrong."""

    device: Device
    alert_type: AlertType
    severity: Severity
    seen_at: datetime
    message: str = ""
    lat: float | None = None
    lon: float | None = None


def serialize_alert(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.pk,
        "source_id": alert.source_id,
        "alert_type": alert.alert_type,
        "severity": alert.severity,
        "status": alert.status,
        "message": alert.message,
        "lat": alert.lat,
        "lon": alert.lon,
        "count": alert.count,
        "site": alert.device.site if alert.device else "",
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
    }


def _event(alert: Alert, *, new: bool) -> Event:
    critical = new and alert.severity == Severity.CRITICAL
    event_type = EventType.CRITICAL_ALERT if critical else EventType.ALERT_UPDATED
    return Event(alert.tenant_id, event_type, serialize_alert(alert))


def active_alert(device: Device, alert_type: str) -> Alert | None:
    return (
        Alert.objects.filter(
            tenant_id=device.tenant_id,
            source_id=device.device_id,
            alert_type=alert_type,
            status__in=ACTIVE_STATUSES,
        )
        .select_related("device")
        .first()
    )


def raise_alert(signal: AlertSignal) -> Event:
    """A new alert, or one more occurrence of the active alert of the same source and type."""
    device = signal.device
    alert = active_alert(device, signal.alert_type)
    if alert is not None:
        Alert.objects.filter(pk=alert.pk).update(count=F("count") + 1)
        alert.refresh_from_db(fields=["count"])
        fields = ["updated_at"]
        if signal.seen_at > alert.last_seen:
            alert.last_seen = signal.seen_at
            fields.append("last_seen")
        escalated = SEVERITY_RANK[signal.severity] < SEVERITY_RANK[alert.severity]
        if escalated:
            alert.severity = signal.severity
            fields.append("severity")
        alert.save(update_fields=fields)
        # An alert that became critical is announced as new: filters on CRITICAL must see it.
        return _event(alert, new=escalated)
    alert = Alert.objects.create(
        tenant_id=device.tenant_id,
        device=device,
        source_id=device.device_id,
        alert_type=signal.alert_type,
        severity=signal.severity,
        message=signal.message,
        lat=signal.lat,
        lon=signal.lon,
        first_seen=signal.seen_at,
        last_seen=signal.seen_at,
    )
    return _event(alert, new=True)


def clear_alert(device: Device, alert_type: str, note: str) -> Event | None:
    """Resolve the active alert of this type, if any, on the system's behalf."""
    alert = active_alert(device, alert_type)
    if alert is None:
        return None
    return transition(alert, AlertStatus.RESOLVED, by=None, note=note)


def transition(alert: Alert, to_status: str, *, by: User | None, note: str = "") -> Event:
    if to_status not in ALLOWED_TRANSITIONS[alert.status]:
        raise TransitionError(f"an alert in status {alert.status} cannot become {to_status}")
    AlertTransition.objects.create(
        alert=alert, from_status=alert.status, to_status=to_status, by=by, note=note
    )
    alert.status = to_status
    fields = ["status", "updated_at"]
    if to_status in CLOSED_STATUSES:
        alert.resolved_at = timezone.now()
        fields.append("resolved_at")
    alert.save(update_fields=fields)
    return _event(alert, new=False)
