"""Small helpers the consumers share."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from apps.core.tasks.base import Batch, received
from apps.devices.status import device_state
from apps.mqtt.intake import Envelope
from apps.noc.broadcast import NocEvent


def reading_fields(batch: Batch, envelope: Envelope, recorded_at: Any) -> dict[str, Any]:
    """The columns every reading row has (tenant, device, key, times)."""
    device = batch.device(envelope)
    return {
        "tenant_id": device.tenant_id,
        "device": device,
        "idempotency_key": envelope.key,
        "recorded_at": recorded_at,
        "received_at": received(envelope),
    }


def telemetry_updates(items: dict[str, dict[str, Any]], batch: Batch) -> list[NocEvent]:
    """One conflated `telemetry_update` per tenant: the latest values per device, and how many
    messages they stand for (the dashboard's messages-per-second)."""
    per_tenant: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for source_id, values in items.items():
        device = batch.devices[source_id]
        per_tenant[device.tenant_id].append({**device_state(device), **values})
    counts: dict[int, int] = defaultdict(int)
    for envelope in batch.messages:
        counts[batch.device(envelope).tenant_id] += 1
    return [
        NocEvent(tenant_id, "telemetry_update", {"devices": devices, "messages": counts[tenant_id]})
        for tenant_id, devices in per_tenant.items()
    ]
