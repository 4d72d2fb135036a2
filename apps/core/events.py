"""Events for NOC dashboards: their types, the tenant groups they go to, and the one sender.

Domain code (alerts, devices) and ingest build `Event`s and return them; the batch runner and
the NOC's own actions send them after their transaction commits, with `broadcast_events`. The
NOC's WebSocket consumer (apps/noc/consumers.py) has one handler per `EventType`, named after it
(a test holds the two together), and joins only the group of its user's tenant.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from channels.layers import get_channel_layer
from django.dispatch import Signal

from apps.core import metrics

log = structlog.get_logger(__name__)


class EventType(StrEnum):
    CRITICAL_ALERT = "critical_alert"
    ALERT_UPDATED = "alert_updated"
    TELEMETRY_UPDATE = "telemetry_update"
    DEVICE_STATUS = "device_status"
    TASK_PROGRESS = "task_progress"
    ANOMALY_DETECTED = "anomaly_detected"
    COMMAND_UPDATED = "command_updated"


@dataclass(frozen=True)
class Event:
    tenant_id: int
    message_type: EventType  # a plain string is accepted if it names one; else ValueError
    data: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "message_type", EventType(self.message_type))


# Sent with `events=[Event, ...]` inside the transaction that records them
# (outbox.broadcast_on_commit), before they are broadcast: how an app above core reacts to
# events (notifications) without core importing it. A receiver runs on the hot path of every
# batch: it must return at once for events it does not act on.
events_recorded = Signal()


# A channel-layer message holding several events of one tenant, in order: a batch's events go
# to each tenant's group in one message, not one each (a message costs the layer's Redis its
# work per member, and the NOC's Daphne a receive). The NOC's feed (apps/noc/feeds.py) hands
# each event on as if sent alone.
EVENT_BUNDLE = "event_bundle"


def unbundle(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The events a channel-layer message carries: a bundle's, or the message itself."""
    if message.get("type") == EVENT_BUNDLE:
        events: list[dict[str, Any]] = message["events"]
        return events
    return [message]


def tenant_group(tenant_id: int) -> str:
    """The channel-layer group of one tenant's dashboards, from the tenant's id only."""
    return f"noc.tenant.{int(tenant_id)}"


def broadcast_events(
    events: list[Event],
    on_sent: Callable[[int], object] | None = None,
    ids: list[str] | None = None,
) -> int:
    """Send events in one event-loop pass; the number the channel layer took.

    `on_sent(i)` is called as soon as the layer took `events[i]` (the outbox marks it sent).
    `ids[i]`, when given, goes with `events[i]` as `id`: an event sent again (a resend after an
    unconfirmed send) has the same id, and the NOC consumer shows it once.
    """
    if not events:
        return 0
    loop = _sender_loop()
    if threading.current_thread() is _sender_thread:
        raise RuntimeError("broadcast_events is synchronous: not callable from its own loop")
    return asyncio.run_coroutine_threadsafe(_send_all(events, on_sent, ids), loop).result()


# One event loop per process, in its own thread, runs every send. The channel layer keeps its
# Redis connections per event loop: async_to_sync made a loop per call, so each broadcast
# connected to Redis anew (about 7 ms of an alert's path; 0.7 ms on a kept connection).
_sender_loop_of: tuple[int, asyncio.AbstractEventLoop] | None = None
_sender_thread: threading.Thread | None = None
_sender_lock = threading.Lock()


def _sender_loop() -> asyncio.AbstractEventLoop:
    global _sender_loop_of, _sender_thread
    with _sender_lock:
        if _sender_loop_of is None or _sender_loop_of[0] != os.getpid():  # none yet, or forked
            loop = asyncio.new_event_loop()
            _sender_thread = threading.Thread(
                target=loop.run_forever, name="noc-broadcast", daemon=True
            )
            _sender_thread.start()
            _sender_loop_of = (os.getpid(), loop)
        return _sender_loop_of[1]


def broadcast_to_noc_dashboard(message_type: str, data: dict[str, Any], *, tenant_id: int) -> bool:
    """One event to a tenant's dashboards (the runbook's name); True when the layer took it.

    Raises ValueError for a `message_type` that is not an `EventType`.
    """
    return broadcast_events([Event(tenant_id, EventType(message_type), data)]) == 1


async def _send_all(
    events: list[Event], on_sent: Callable[[int], object] | None, ids: list[str] | None
) -> int:
    """One message per tenant (its event alone, or its events in order in a bundle), all sent
    together: the layer's `group_send_many` takes every tenant's group in two Redis round trips
    (core/channel_layer.py), where a `group_send` each took four. A layer without it (another
    CHANNEL_LAYERS backend) gets a `group_send` per tenant."""
    layer = get_channel_layer()
    per_tenant: dict[int, list[int]] = {}
    for index, event in enumerate(events):
        per_tenant.setdefault(event.tenant_id, []).append(index)
    sends: list[tuple[str, dict[str, Any]]] = []
    for tenant_id, indexes in per_tenant.items():
        messages: list[dict[str, Any]] = []
        for index in indexes:
            # "type" names the consumer's handler of the same name.
            message = {"type": events[index].message_type.value, "data": events[index].data}
            if ids is not None:
                message["id"] = ids[index]
            messages.append(message)
        bundle = {"type": EVENT_BUNDLE, "events": messages}
        sends.append((tenant_group(tenant_id), messages[0] if len(messages) == 1 else bundle))
    types = [events[index].message_type.value for index in range(len(events))]
    try:
        if layer is None:
            raise RuntimeError("CHANNEL_LAYERS is not configured")
        send_many = getattr(layer, "group_send_many", None)
        if send_many is not None:
            await send_many(sends)
        else:
            for group, message in sends:
                await layer.group_send(group, message)
    except Exception as exc:  # counted and logged; the data is already stored
        for message_type in types:
            metrics.WEBSOCKET_BROADCAST_FAILURE.labels(message_type=message_type).inc()
        log.error(
            "NOC broadcast failed",
            message_types=sorted(set(types)),
            events=len(types),
            tenant_ids=sorted(per_tenant),
            error=f"{type(exc).__name__}: {exc}",
            hint="check the channel layer (Redis DB 2, CHANNELS_ENCRYPTION_KEY)",
        )
        return 0
    for index, message_type in enumerate(types):
        metrics.WEBSOCKET_BROADCAST_SUCCESS.labels(message_type=message_type).inc()
        if on_sent is not None:
            on_sent(index)
    return len(events)
