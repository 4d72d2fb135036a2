"""Raising, repeating, clearing and moving alerts through their lifecycle.

Every function returns the NOC event describing the change (apps/core/events.py), for the
caller to broadcast after its transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
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
from apps.core.bulk import fetch_instances, one_of, update_rows
from apps.core.events import Event, EventType
from apps.core.isotime import isoformat
from apps.devices.models import Device
from apps.tenants.models import User

# An active alert's identity within its tenant: (device id, alert type).
AlertKey = tuple[str, str]

# Every column of an alert but its id (fetch_instances reads the id anyway).
ALERT_FIELDS = tuple(field.name for field in Alert._meta.concrete_fields if not field.primary_key)

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
        "first_seen": isoformat(alert.first_seen),
        "last_seen": isoformat(alert.last_seen),
    }


def _event(alert: Alert, *, new: bool) -> Event:
    """`new`: the alert was just raised or its severity rose (what notifications act on)."""
    critical = new and alert.severity == Severity.CRITICAL
    event_type = EventType.CRITICAL_ALERT if critical else EventType.ALERT_UPDATED
    return Event(alert.tenant_id, event_type, {**serialize_alert(alert), "raised": new})


def active_alerts(devices: Iterable[Device], alert_types: Iterable[str]) -> dict[AlertKey, Alert]:
    """The active alerts of these types of these devices, by (device id, type): one query,
    however many devices. Each alert holds its device as given (its event shows the site)."""
    by_id = {device.device_id: device for device in devices}
    if not by_id:
        return {}
    alerts = Alert.objects.filter(
        source_id__in=one_of(Alert, by_id),
        alert_type__in=set(alert_types),
        status__in=ACTIVE_STATUSES,
    ).order_by()  # by the index on (source_id, alert_type, status)
    found: dict[AlertKey, Alert] = {}
    # Built without Model.__init__ (core/bulk.py): a telemetry batch looks up hundreds of
    # devices and finds some dozens of alerts, each of whose __init__ cost more than its row.
    for alert in fetch_instances(alerts, ALERT_FIELDS):
        device = by_id[alert.source_id]
        # Device ids are unique system-wide, but an alert is its tenant's: never match another's.
        if alert.tenant_id != device.tenant_id:
            continue
        if alert.device_id == device.pk:
            Alert.device.field.set_cached_value(alert, device)
        found[(alert.source_id, alert.alert_type)] = alert
    return found


def settle_alerts(
    alert_type: AlertType, raised: Sequence[AlertSignal], cleared: Sequence[tuple[Device, str]]
) -> list[Event]:
    """A rule's verdict over a batch: `raise_alerts(raised)` (all of `alert_type`) and
    `clear_alerts(alert_type, cleared)`, with one query for the active alerts of both."""
    if any(signal.alert_type != alert_type for signal in raised):
        raise ValueError(f"settle_alerts({alert_type}) was given a signal of another type")
    active = active_alerts(
        [signal.device for signal in raised] + [device for device, _ in cleared], [alert_type]
    )
    return _raise(raised, active) + _clear(alert_type, cleared, active)


def raise_alert(signal: AlertSignal) -> Event:
    """A new alert, or one more occurrence of the active alert of the same source and type."""
    return raise_alerts([signal])[0]


def raise_alerts(signals: Sequence[AlertSignal]) -> list[Event]:
    """`raise_alert` for many signals in a bounded number of queries, whatever their number:
    one to find the active alerts they repeat, one update for the repeats, one insert for the
    new alerts. One event per alert: its state after all its signals.

    The caller holds the signals' device rows (consumers.base.with_devices locks them), the
    lock every writer of an alert's count takes; so counts read here are written back exact.
    """
    devices = {signal.device.device_id: signal.device for signal in signals}
    return _raise(signals, active_alerts(devices.values(), {s.alert_type for s in signals}))


def _raise(signals: Sequence[AlertSignal], active: dict[AlertKey, Alert]) -> list[Event]:
    grouped: dict[AlertKey, list[AlertSignal]] = {}
    for signal in signals:
        grouped.setdefault((signal.device.device_id, signal.alert_type), []).append(signal)
    if not grouped:
        return []
    repeated: list[tuple[Alert, bool]] = []
    created: list[Alert] = []
    now = timezone.now()
    for key, group in grouped.items():
        severity = min((s.severity for s in group), key=SEVERITY_RANK.__getitem__)
        last_seen = max(s.seen_at for s in group)
        alert = active.get(key)
        if alert is None:
            first = group[0]
            created.append(
                Alert(
                    tenant_id=first.device.tenant_id,
                    device=first.device,
                    source_id=first.device.device_id,
                    alert_type=first.alert_type,
                    severity=severity,
                    message=first.message,
                    lat=first.lat,
                    lon=first.lon,
                    count=len(group),
                    first_seen=min(s.seen_at for s in group),
                    last_seen=last_seen,
                )
            )
            continue
        alert.count += len(group)
        alert.last_seen = max(alert.last_seen, last_seen)
        # An alert that became critical is announced as new: filters on CRITICAL must see it.
        escalated = SEVERITY_RANK[severity] < SEVERITY_RANK[alert.severity]
        if escalated:
            alert.severity = severity
        alert.updated_at = now
        repeated.append((alert, escalated))
    update_rows([alert for alert, _ in repeated], ["count", "last_seen", "severity", "updated_at"])
    _insert(created)
    events = [_event(alert, new=escalated) for alert, escalated in repeated]
    return events + [_event(alert, new=True) for alert in created]


def _insert(alerts: list[Alert]) -> None:
    """Create the alerts, each with its id (for its event)."""
    if connection.features.can_return_rows_from_bulk_insert:
        Alert.objects.bulk_create(alerts)
    else:  # an SQLite before 3.35 returns no ids from a bulk insert
        for alert in alerts:
            alert.save(force_insert=True)


def clear_alert(device: Device, alert_type: str, note: str) -> Event | None:
    """Resolve the active alert of this type, if any, on the system's behalf."""
    cleared = clear_alerts(alert_type, [(device, note)])
    return cleared[0] if cleared else None


def clear_alerts(alert_type: str, clearings: Sequence[tuple[Device, str]]) -> list[Event]:
    """Resolve the active alert of this type of each device that has one, with its note, on the
    system's behalf: one query to find them, then one insert and one update for all found."""
    return _clear(alert_type, clearings, active_alerts([d for d, _ in clearings], [alert_type]))


def _clear(
    alert_type: str, clearings: Sequence[tuple[Device, str]], active: dict[AlertKey, Alert]
) -> list[Event]:
    notes = {device.device_id: note for device, note in clearings}
    found = {
        source_id: alert
        for source_id in notes
        if (alert := active.get((source_id, alert_type))) is not None
    }
    if not found:
        return []
    now = timezone.now()
    steps = []
    for source_id, alert in found.items():
        steps.append(
            AlertTransition(
                alert=alert,
                from_status=alert.status,
                to_status=AlertStatus.RESOLVED,
                note=notes[source_id],
            )
        )
        alert.status, alert.resolved_at, alert.updated_at = AlertStatus.RESOLVED, now, now
    AlertTransition.objects.bulk_create(steps)
    update_rows(list(found.values()), ["status", "resolved_at", "updated_at"])
    return [_event(alert, new=False) for alert in found.values()]


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
