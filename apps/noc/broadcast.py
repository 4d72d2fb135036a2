"""The one way tasks reach NOC browsers: `broadcast_to_noc_dashboard`.

Events go to the tenant's group only; the group name comes from apps/noc/groups.py. The event
`type` is the consumer's handler name (critical_alert, alert_updated, telemetry_update,
device_status, task_progress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.monitoring import metrics
from apps.noc.groups import tenant_group

log = structlog.get_logger(__name__)

EVENT_TYPES = frozenset(
    {"critical_alert", "alert_updated", "telemetry_update", "device_status", "task_progress"}
)


@dataclass(frozen=True)
class NocEvent:
    tenant_id: int
    message_type: str
    data: dict[str, Any]


def broadcast_to_noc_dashboard(message_type: str, data: dict[str, Any], *, tenant_id: int) -> bool:
    """Send one event to a tenant's dashboards; True when the channel layer took it."""
    return broadcast_events([NocEvent(tenant_id, message_type, data)]) == 1


def broadcast_events(events: list[NocEvent]) -> int:
    """Send events in one event-loop pass (one per tenant and type per batch, by design)."""
    if not events:
        return 0
    for event in events:
        if event.message_type not in EVENT_TYPES:
            raise ValueError(f"unknown NOC event type {event.message_type!r}")
    return int(async_to_sync(_send_all)(events))


async def _send_all(events: list[NocEvent]) -> int:
    layer = get_channel_layer()
    sent = 0
    for event in events:
        try:
            if layer is None:
                raise RuntimeError("CHANNEL_LAYERS is not configured")
            await layer.group_send(
                tenant_group(event.tenant_id), {"type": event.message_type, "data": event.data}
            )
        except Exception as exc:  # counted and logged; the data is already stored
            metrics.WEBSOCKET_BROADCAST_FAILURE.labels(message_type=event.message_type).inc()
            log.error(
                "NOC broadcast failed",
                message_type=event.message_type,
                tenant_id=event.tenant_id,
                error=f"{type(exc).__name__}: {exc}",
                hint="check the channel layer (Redis DB 2, CHANNELS_ENCRYPTION_KEY)",
            )
        else:
            metrics.WEBSOCKET_BROADCAST_SUCCESS.labels(message_type=event.message_type).inc()
            sent += 1
    return sent
