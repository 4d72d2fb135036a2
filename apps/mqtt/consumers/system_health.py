"""system/<id>/health: store samples; CPU, memory or disk above the limit raises an alert."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, settle_alerts
from apps.core.bulk import insert_rows
from apps.core.events import Event
from apps.core.isotime import isoformat
from apps.devices.messages import SystemHealthPayload
from apps.devices.models import Device, SystemHealthSample
from apps.mqtt.consumers.base import DeviceBatch, reading_fields, telemetry_updates


def process(batch: DeviceBatch) -> list[Event]:
    rows: list[dict[str, Any]] = []
    latest: dict[str, SystemHealthPayload] = {}
    for envelope in batch.messages:
        payload = batch.payload(envelope, SystemHealthPayload)
        rows.append(
            {
                **reading_fields(batch, envelope, payload.timestamp),
                "cpu": payload.cpu,
                "memory": payload.memory,
                "disk": payload.disk,
                "uptime": payload.uptime,
            }
        )
        current = latest.get(envelope.source_id)
        if current is None or payload.timestamp >= current.timestamp:
            latest[envelope.source_id] = payload
    insert_rows(SystemHealthSample, rows)

    limit = settings.SYSTEM_RESOURCE_ALERT_PERCENT
    updates: dict[str, dict[str, Any]] = {}
    overloaded: list[AlertSignal] = []
    recovered: list[tuple[Device, str]] = []
    for source_id, payload in latest.items():
        device = batch.devices[source_id]
        resources = {"cpu": payload.cpu, "memory": payload.memory, "disk": payload.disk}
        over = {
            name: value for name, value in resources.items() if value is not None and value > limit
        }
        if over:
            detail = ", ".join(f"{name} {value:g} %" for name, value in over.items())
            overloaded.append(
                AlertSignal(
                    device=device,
                    alert_type=AlertType.SYSTEM_HEALTH,
                    severity=Severity.HIGH,
                    seen_at=payload.timestamp,
                    message=f"{detail} (limit {limit:g} %)",
                )
            )
        else:
            recovered.append((device, "resources back under the limit"))
        updates[source_id] = {**resources, "recorded_at": isoformat(payload.timestamp)}
    events = settle_alerts(AlertType.SYSTEM_HEALTH, overloaded, recovered)
    events.extend(telemetry_updates(updates, batch))
    return events
