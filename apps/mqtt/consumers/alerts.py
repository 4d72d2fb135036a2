"""alert/<id>/<kind>: a device says something is wrong (panic, SOS, fire, …)."""

from __future__ import annotations

from apps.alerts.services import AlertSignal, raise_alert
from apps.core.events import Event
from apps.mqtt.consumers.base import DeviceBatch
from apps.mqtt.schemas import AlertPayload


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
