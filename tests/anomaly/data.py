"""Generated telemetry for the anomaly tests: a normal fleet, and readings that are not."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from apps.devices.models import Device, TelemetryReading

_keys = itertools.count()
Row = tuple[float | None, float | None, float | None]  # battery, signal, temperature


def normal(rng: np.random.Generator, count: int) -> list[Row]:
    """What a healthy sensor reports: battery anywhere from 40 to 100 %, a steady signal and room
    temperature."""
    return [
        (float(b), float(s), float(t))
        for b, s, t in zip(
            rng.uniform(40, 100, count),
            rng.normal(-65, 4, count),
            rng.normal(24, 1.5, count),
            strict=True,
        )
    ]


def anomalous(rng: np.random.Generator, count: int) -> list[Row]:
    """Overheating, a collapsed signal, freezing, or a warm device with a weak signal (each
    value alone within a few deviations of normal)."""
    rows: list[Row] = []
    for i in range(count):
        battery = float(rng.uniform(40, 100))
        kind = i % 4
        if kind == 0:
            rows.append((battery, float(rng.normal(-65, 4)), float(rng.uniform(55, 90))))
        elif kind == 1:
            rows.append((battery, float(rng.uniform(-150, -110)), float(rng.normal(24, 1.5))))
        elif kind == 2:
            rows.append((battery, float(rng.normal(-65, 4)), float(rng.uniform(-20, 0))))
        else:
            rows.append((battery, float(rng.uniform(-88, -82)), float(rng.uniform(32, 35))))
    return rows


def store(devices: list[Device], rows: list[Row], *, days: float = 3) -> None:
    """The rows as the telemetry consumer stores them, spread over the last `days` days and
    round robin over the devices."""
    now = timezone.now()
    step = timedelta(days=days) / max(1, len(rows))
    readings: list[Any] = []
    for i, (battery, signal, temperature) in enumerate(rows):
        device = devices[i % len(devices)]
        at = now - timedelta(days=days) + step * i
        readings.append(
            TelemetryReading(
                tenant_id=device.tenant_id,
                device=device,
                idempotency_key=f"generated-{next(_keys)}",
                recorded_at=at,
                received_at=at,
                battery=battery,
                signal=signal,
                temperature=temperature,
            )
        )
    TelemetryReading.objects.bulk_create(readings, batch_size=500)
