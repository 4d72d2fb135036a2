"""alert/<id>/<kind>: a device says something is wrong (panic, SOS, fire, …)."""

from __future__ import annotations

from apps.alerts.models import AlertType
from apps.alerts.services import AlertSignal, raise_alerts
from apps.core.events import Event
from apps.devices.messages import AlertPayload, DevicePayload
from apps.mqtt.consumers.base import DeviceBatch


def alert_raised(payload: DevicePayload) -> AlertType | None:
    """The alert the message raises: what admission checks against the device's kind."""
    return payload.alert_type if isinstance(payload, AlertPayload) else None


def process(batch: DeviceBatch) -> list[Event]:
    signals = []
    for envelope in batch.messages:
        payload = batch.payload(envelope, AlertPayload)
        signals.append(
            AlertSignal(
                device=batch.device(envelope),
                alert_type=payload.alert_type,
                severity=payload.severity,
                seen_at=payload.timestamp,
                message=payload.message,
                lat=payload.location.lat if payload.location else None,
                lon=payload.location.lon if payload.location else None,
            )
        )
    return raise_alerts(signals)
