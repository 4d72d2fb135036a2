"""sensor/<id>/<kind>: store readings; per-type threshold rules raise alerts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, raise_alerts
from apps.core.bulk import insert_rows
from apps.core.events import Event
from apps.core.isotime import isoformat
from apps.devices.messages import DevicePayload, SensorPayload
from apps.devices.models import SensorReading
from apps.mqtt.consumers.base import DeviceBatch, reading_fields, telemetry_updates


@dataclass(frozen=True)
class SensorRule:
    sensor_type: str
    fires: Callable[[SensorPayload], bool]
    alert_type: AlertType
    severity: Severity
    describe: Callable[[SensorPayload], str]


def _smoke_over_threshold(payload: SensorPayload) -> bool:
    return payload.value is not None and payload.value > settings.SMOKE_ALARM_THRESHOLD


RULES: tuple[SensorRule, ...] = (
    SensorRule(
        "smoke",
        _smoke_over_threshold,
        AlertType.FIRE,
        Severity.CRITICAL,
        lambda p: f"smoke level {p.value:g} above {settings.SMOKE_ALARM_THRESHOLD:g}",
    ),
    SensorRule(
        "door",
        lambda p: p.state == "FORCED",
        AlertType.INTRUSION,
        Severity.CRITICAL,
        lambda p: "door forced open",
    ),
)


def alert_raised(payload: DevicePayload) -> AlertType | None:
    """The alert a reading of this sensor type can raise, whatever its value: what admission
    checks against the device's kind (a smoke reading may raise FIRE)."""
    if not isinstance(payload, SensorPayload):
        return None
    return next((rule.alert_type for rule in RULES if rule.sensor_type == payload.type), None)


def process(batch: DeviceBatch) -> list[Event]:
    rows: list[dict[str, Any]] = []
    fired: list[AlertSignal] = []
    updates: dict[str, dict[str, Any]] = {}
    for envelope in batch.messages:
        payload = batch.payload(envelope, SensorPayload)
        rows.append(
            {
                **reading_fields(batch, envelope, payload.timestamp),
                "sensor_type": payload.type,
                "value": payload.value,
                "state": payload.state or "",
            }
        )
        for rule in RULES:
            if rule.sensor_type == payload.type and rule.fires(payload):
                fired.append(
                    AlertSignal(
                        device=batch.device(envelope),
                        alert_type=rule.alert_type,
                        severity=rule.severity,
                        seen_at=payload.timestamp,
                        message=rule.describe(payload),
                    )
                )
        updates[envelope.source_id] = {
            "sensor_type": payload.type,
            "value": payload.value,
            "state": payload.state,
            "recorded_at": isoformat(payload.timestamp),
        }
    insert_rows(SensorReading, rows)
    return raise_alerts(fired) + telemetry_updates(updates, batch)
