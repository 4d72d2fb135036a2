"""device/<id>/telemetry: store readings, keep device state, LOW_BATTERY on and off, ANOMALY.

The battery rule runs over the batch: each device's latest reading decides, and the alerts it
raises or clears are found and written for all devices at once (apps/alerts/services.py). Every
reading is scored with its tenant and device kind's anomaly model, if it has one
(apps/anomaly/scoring.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, settle_alerts
from apps.anomaly import scoring
from apps.core.bulk import insert_rows
from apps.core.events import Event
from apps.core.isotime import isoformat
from apps.devices.messages import TelemetryPayload
from apps.devices.models import Device, TelemetryReading
from apps.mqtt.consumers.base import DeviceBatch, reading_fields, telemetry_updates


def process(batch: DeviceBatch) -> list[Event]:
    events: list[Event] = []
    rows: list[dict[str, Any]] = []
    latest: dict[str, tuple[Any, TelemetryPayload]] = {}
    scored: list[scoring.Reading] = []
    for envelope in batch.messages:
        payload = batch.payload(envelope, TelemetryPayload)
        row = reading_fields(batch, envelope, payload.timestamp)
        row["battery"], row["signal"] = payload.battery, payload.signal
        row["temperature"], row["connectivity"] = payload.temperature, payload.connectivity or ""
        rows.append(row)
        scored.append((batch.device(envelope), row))
        current = latest.get(envelope.source_id)
        if current is None or payload.timestamp >= current[0]:
            latest[envelope.source_id] = (payload.timestamp, payload)
    insert_rows(TelemetryReading, rows)

    threshold = settings.LOW_BATTERY_PERCENT
    low: list[AlertSignal] = []
    recovered: list[tuple[Device, str]] = []
    updates: dict[str, dict[str, Any]] = {}
    for source_id, (recorded_at, payload) in latest.items():
        device = batch.devices[source_id]
        device.battery = payload.battery if payload.battery is not None else device.battery
        device.signal = payload.signal if payload.signal is not None else device.signal
        if payload.battery is not None and payload.battery < threshold:
            if device.status in (Device.Status.ONLINE, Device.Status.UNKNOWN):
                device.status = Device.Status.LOW_BATTERY
            low.append(
                AlertSignal(
                    device=device,
                    alert_type=AlertType.LOW_BATTERY,
                    severity=Severity.MEDIUM,
                    seen_at=recorded_at,
                    message=f"battery at {payload.battery:g} % (below {threshold:g} %)",
                )
            )
        elif payload.battery is not None:
            if device.status == Device.Status.LOW_BATTERY:
                device.status = Device.Status.ONLINE
            recovered.append((device, f"battery back at {payload.battery:g} %"))
        updates[source_id] = {
            "temperature": payload.temperature,
            "connectivity": payload.connectivity,
            "recorded_at": isoformat(recorded_at),
        }
    events.extend(settle_alerts(AlertType.LOW_BATTERY, low, recovered))
    events.extend(scoring.detect(scored))
    events.extend(telemetry_updates(updates, batch))
    return events
