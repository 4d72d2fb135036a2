"""device/<id>/telemetry: store readings, keep device state, LOW_BATTERY on and off."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, clear_alert, raise_alert
from apps.core.events import Event
from apps.devices.models import Device, TelemetryReading
from apps.devices.services import status_event
from apps.mqtt.consumers.base import DeviceBatch, reading_fields, telemetry_updates
from apps.mqtt.schemas import TelemetryPayload


def process(batch: DeviceBatch) -> list[Event]:
    events: list[Event] = []
    rows: list[TelemetryReading] = []
    latest: dict[str, tuple[Any, TelemetryPayload]] = {}
    for envelope in batch.messages:
        payload = TelemetryPayload.model_validate(envelope.payload)
        rows.append(
            TelemetryReading(
                **reading_fields(batch, envelope, payload.timestamp),
                battery=payload.battery,
                signal=payload.signal,
                temperature=payload.temperature,
                connectivity=payload.connectivity or "",
            )
        )
        current = latest.get(envelope.source_id)
        if current is None or payload.timestamp >= current[0]:
            latest[envelope.source_id] = (payload.timestamp, payload)
    TelemetryReading.objects.bulk_create(rows)

    updates: dict[str, dict[str, Any]] = {}
    changed: list[Device] = []
    for source_id, (recorded_at, payload) in latest.items():
        device = batch.devices[source_id]
        before = device.status
        device.battery = payload.battery if payload.battery is not None else device.battery
        device.signal = payload.signal if payload.signal is not None else device.signal
        events.extend(_battery_rules(device, payload, recorded_at))
        changed.append(device)
        if device.status != before:
            events.append(status_event(device))
        updates[source_id] = {
            "temperature": payload.temperature,
            "connectivity": payload.connectivity,
            "recorded_at": recorded_at.isoformat(),
        }
    Device.objects.bulk_update(changed, ["battery", "signal", "status"])
    events.extend(telemetry_updates(updates, batch))
    return events


def _battery_rules(device: Device, payload: TelemetryPayload, at: Any) -> list[Event]:
    if payload.battery is None:
        return []
    threshold = settings.LOW_BATTERY_PERCENT
    if payload.battery < threshold:
        if device.status in (Device.Status.ONLINE, Device.Status.UNKNOWN):
            device.status = Device.Status.LOW_BATTERY
        signal = AlertSignal(
            device=device,
            alert_type=AlertType.LOW_BATTERY,
            severity=Severity.MEDIUM,
            seen_at=at,
            message=f"battery at {payload.battery:g} % (below {threshold:g} %)",
        )
        return [raise_alert(signal)]
    if device.status == Device.Status.LOW_BATTERY:
        device.status = Device.Status.ONLINE
    cleared = clear_alert(device, AlertType.LOW_BATTERY, f"battery back at {payload.battery:g} %")
    return [cleared] if cleared else []
