"""alert/<id>/<kind>: a device says something is wrong (panic, SOS, fire, …)."""

from __future__ import annotations

from apps.alerts.models import AlertType
from apps.alerts.services import AlertSignal, raise_alert
from apps.core.events import Event
from apps.mqtt.consumers.base import DeviceBatch
from apps.mqtt.schemas import AlertPayload, DevicePayload


def alert_raised(payload: DevicePayload) -> AlertType | None:
    """The alert the message raises: what admission checks against the device's kind."""
    return payload.alert_type if isinstance(payload, AlertPayload) else None


def process(batch: DeviceBatch) -> list[Event]:
    events = []
    for envelope in batch.messages:
        payload = AlertPayload.model_validate(envelope.payload)
        signal = AlertSignal(
            device=batch.device(envelope),
            alert_type=payload.alert_type,
            severity=payload.severity,
            seen_at=payload.timestamp,
            message=payload.message,
            lat=payload.location.lat if payload.location else None,
            lon=payload.location.lon if payload.location else None,
        )
        events.append(raise_alert(signal))
    return events
