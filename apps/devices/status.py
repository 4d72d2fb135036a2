"""Device status bookkeeping: last seen, ONLINE / OFFLINE / LOW_BATTERY, and their events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, clear_alert, raise_alert
from apps.devices.models import Device
from apps.noc.broadcast import NocEvent


def device_state(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "kind": device.kind,
        "site": device.site,
        "status": device.status,
        "battery": device.battery,
        "signal": device.signal,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
    }


def status_event(device: Device) -> NocEvent:
    return NocEvent(device.tenant_id, "device_status", device_state(device))


def mark_seen(seen: list[tuple[Device, datetime]]) -> list[NocEvent]:
    """Record that devices were heard from: a new device is ONLINE, an OFFLINE one is back
    and its alert cleared."""
    events: list[NocEvent] = []
    changed: list[Device] = []
    for device, at in seen:
        if device.last_seen is not None and at <= device.last_seen:
            continue
        device.last_seen = at
        changed.append(device)
        if device.status == Device.Status.UNKNOWN:
            device.status = Device.Status.ONLINE
            events.append(status_event(device))
        elif device.status == Device.Status.OFFLINE:
            device.status = Device.Status.ONLINE
            cleared = clear_alert(device, AlertType.OFFLINE, "device reported again")
            if cleared:
                events.append(cleared)
            events.append(status_event(device))
    Device.objects.bulk_update(changed, ["last_seen", "status"])
    return events


def mark_offline(device: Device, now: datetime) -> list[NocEvent]:
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
    return [raise_alert(signal), status_event(device)]
