"""guard/<id>/gps: store positions; leaving every active geofence raises GEOFENCE_VIOLATION."""

from __future__ import annotations

from typing import Any

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, raise_alerts
from apps.core.bulk import insert_rows
from apps.core.events import Event
from apps.core.isotime import isoformat
from apps.devices.messages import GpsPayload
from apps.devices.models import Geofence, GuardLocation
from apps.mqtt.consumers.base import DeviceBatch, reading_fields, telemetry_updates


def process(batch: DeviceBatch) -> list[Event]:
    tenant_ids = {device.tenant_id for device in batch.devices.values()}
    fences: dict[int, list[Geofence]] = {tenant_id: [] for tenant_id in tenant_ids}
    for fence in Geofence.objects.filter(tenant_id__in=tenant_ids, active=True):
        fences[fence.tenant_id].append(fence)

    rows: list[dict[str, Any]] = []
    outside: list[AlertSignal] = []
    updates: dict[str, dict[str, Any]] = {}
    for envelope in batch.messages:
        payload = batch.payload(envelope, GpsPayload)
        device = batch.device(envelope)
        tenant_fences = fences[device.tenant_id]
        inside = (
            any(fence.contains(payload.lat, payload.lon) for fence in tenant_fences)
            if tenant_fences
            else None
        )
        rows.append(
            {
                **reading_fields(batch, envelope, payload.timestamp),
                "lat": payload.lat,
                "lon": payload.lon,
                "accuracy": payload.accuracy,
                "inside_geofence": inside,
            }
        )
        if inside is False:
            names = ", ".join(fence.name for fence in tenant_fences)
            outside.append(
                AlertSignal(
                    device=device,
                    alert_type=AlertType.GEOFENCE_VIOLATION,
                    severity=Severity.HIGH,
                    seen_at=payload.timestamp,
                    message=f"outside every active geofence ({names})",
                    lat=payload.lat,
                    lon=payload.lon,
                )
            )
        updates[envelope.source_id] = {
            "lat": payload.lat,
            "lon": payload.lon,
            "inside_geofence": inside,
            "recorded_at": isoformat(payload.timestamp),
        }
    insert_rows(GuardLocation, rows)
    return raise_alerts(outside) + telemetry_updates(updates, batch)
