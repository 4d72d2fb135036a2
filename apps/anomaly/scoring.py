"""Scoring a telemetry batch with each tenant and device kind's current model.

The telemetry consumer hands over every reading of its batch with its device. Readings whose
(tenant, kind) has no model cost one dict lookup; the others are scored in one call per model.
A reading scoring at or above its model's threshold raises ANOMALY (one active alert per device,
repeats counted, as every rule alert) and an `anomaly_detected` event with the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, raise_alerts
from apps.anomaly.features import complete, matrix, row_values
from apps.anomaly.registry import MODELS, LoadedModel
from apps.core.events import Event, EventType
from apps.devices.models import Device

SEVERITY = Severity.HIGH

# A reading as the telemetry consumer stores it: its row (feature columns, recorded_at).
Reading = tuple[Device, Mapping[str, Any]]


def detect(readings: Sequence[Reading]) -> list[Event]:
    """The alert and `anomaly_detected` events of the batch's anomalous readings."""
    models = MODELS.current()
    if not models:
        return []
    import numpy as np

    by_model: dict[int, tuple[LoadedModel, list[Reading]]] = {}
    for device, row in readings:
        model = models.get((device.tenant_id, device.kind))
        if model is not None:
            by_model.setdefault(model.pk, (model, []))[1].append((device, row))
    findings: dict[str, dict[str, Any]] = {}  # the strangest reading per device
    signals: list[AlertSignal] = []
    for model, group in by_model.values():
        values = matrix([row_values(row, model.features) for _, row in group])
        scores = np.full(len(group), np.nan)
        scorable = complete(values)
        if scorable.any():
            scores[scorable] = model.estimate.distance(values[scorable])
        for index in np.flatnonzero(scores >= model.threshold):
            device, row = group[index]
            found = _finding(model, float(scores[index]), row)
            signals.append(
                AlertSignal(
                    device=device,
                    alert_type=AlertType.ANOMALY,
                    severity=SEVERITY,
                    seen_at=row["recorded_at"],
                    message=_describe(found),
                )
            )
            best = findings.get(device.device_id)
            if best is None or found["score"] > best["score"]:
                findings[device.device_id] = found
    if not signals:
        return []
    events = raise_alerts(signals)
    detected = [
        Event(event.tenant_id, EventType.ANOMALY_DETECTED, {**event.data, **finding})
        for event in events
        if (finding := findings.get(event.data["source_id"])) is not None
    ]
    return events + detected


def _finding(model: LoadedModel, value: float, row: Mapping[str, Any]) -> dict[str, Any]:
    """What `anomaly_detected` adds to the alert: the score, against what, of which values."""
    return {
        "score": round(value, 4),
        "threshold": round(model.threshold, 4),
        "model_version": model.version,
        "features": {name: row.get(name) for name in model.features},
    }


def _describe(found: dict[str, Any]) -> str:
    shown = ", ".join(f"{name} {value:g}" for name, value in found["features"].items())
    return (
        f"{found['score']:.1f} deviations from normal (threshold {found['threshold']:.1f}, "
        f"model v{found['model_version']}): {shown}"
    )
