"""What every consumer of device messages shares, written once.

The batch runner (apps/core/tasks/base.py) hands `with_devices(consumer, schema=…)` one batch
before its transaction, where each payload is validated by its kind's schema, then the fresh
messages inside it. There this module locks their devices, sets aside messages whose
device is gone, calls the consumer with a `DeviceBatch`, records that the devices were heard
from (apps/mqtt/presence.py), writes what changed on the devices in one statement and tells the
NOC whose status changed, in one event per tenant. A
consumer holds only domain logic: it bulk-creates rows, changes its devices' state fields in
memory, evaluates its rules over the whole batch and returns the events for the NOC.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from operator import attrgetter
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from apps.core.bulk import fetch_instances, one_of, update_rows
from apps.core.envelope import Envelope
from apps.core.events import Event, EventType
from apps.core.tasks.base import Apply, Handler, Outcome, Refusal
from apps.devices.messages import DevicePayload
from apps.devices.models import Device
from apps.devices.services import device_state, status_events
from apps.mqtt import presence

P = TypeVar("P", bound=DevicePayload)


@dataclass(frozen=True)
class DeviceBatch:
    """Fresh (never processed) messages of one kind, each with its device, locked, and its
    payload as the kind's schema reads it."""

    messages: list[Envelope]
    devices: dict[str, Device]
    # By the envelope's identity (a key may come twice in a batch; the ledger applies the
    # first): the payload validated before the transaction, or the error validating it raised.
    payloads: dict[int, DevicePayload | Exception]

    def device(self, envelope: Envelope) -> Device:
        return self.devices[envelope.source_id]

    def payload(self, envelope: Envelope, schema: type[P]) -> P:
        """The envelope's payload as `schema` (its kind's) reads it. A payload that failed
        validation raises here, as it did when consumers validated it: the batch is retried,
        then split, and the message dead-lettered (core/tasks/base.py)."""
        payload = self.payloads.get(id(envelope))
        if payload is None:  # an Apply is given the very envelopes its Handler was called with
            raise LookupError(f"{envelope.topic}: not among the messages validated for its batch")
        if isinstance(payload, Exception):
            raise payload
        if not isinstance(payload, schema):
            found, wanted = type(payload).__name__, schema.__name__
            raise TypeError(f"{envelope.topic}: validated as {found}, read as {wanted}")
        return payload


Consumer = Callable[[DeviceBatch], list[Event]]

# What consumers and presence change on a device; written back once per batch.
STATE_FIELDS = ("status", "last_seen", "last_heartbeat", "battery", "signal")
# What a batch reads of its devices: the rest (created_at, names, credentials) would only cost
# its conversion, for each of up to MQTT_BATCH_MAX_SIZE devices.
BATCH_FIELDS = ("tenant_id", "device_id", "kind", "site", *STATE_FIELDS)


_state: Callable[[Device], tuple[Any, ...]] = attrgetter(*STATE_FIELDS)
STATUS = STATE_FIELDS.index("status")  # its place in a `_state`


def with_devices(
    consumer: Consumer, *, schema: type[DevicePayload], heartbeat: bool = False
) -> Handler:
    """The batch runner's handler for one topic kind's consumer: `schema` is the kind's payload
    model; `heartbeat`: the kind's messages are heartbeats (topics.py)."""

    def prepare(envelopes: list[Envelope]) -> Apply:
        # Before the transaction: validating a telemetry payload took about a tenth of the
        # general worker's hold of the writer (docs/performance.md). The subscriber validated
        # it too; a task queued by an earlier release, or replayed, may not match today's.
        payloads = dict(map(_validated, envelopes, repeat(schema)))
        return partial(handle, payloads=payloads)

    def handle(
        envelopes: list[Envelope], payloads: dict[int, DevicePayload | Exception]
    ) -> Outcome:
        # Locked for the transaction: workers of several queues update the same devices
        # (PostgreSQL; SQLite serialises writers anyway). Ordered to avoid deadlocks.
        ids = {envelope.source_id for envelope in envelopes}
        locked = (
            Device.objects.select_for_update(of=("self",))
            .filter(device_id__in=one_of(Device, ids))
            .order_by("pk")
        )
        devices = {device.device_id: device for device in fetch_instances(locked, BATCH_FIELDS)}
        before = {device_id: _state(device) for device_id, device in devices.items()}
        known = [envelope for envelope in envelopes if envelope.source_id in devices]
        orphans = [envelope for envelope in envelopes if envelope.source_id not in devices]
        batch = DeviceBatch(known, devices, payloads)
        events = consumer(batch) if known else []
        events.extend(presence.mark_seen(_last_heard(batch), heartbeat=heartbeat))
        states = {device_id: (_state(d), before[device_id]) for device_id, d in devices.items()}
        changed = [devices[device_id] for device_id, (now, then) in states.items() if now != then]
        update_rows(changed, _changed_fields([states[d.device_id] for d in changed]))
        moved = [d for d in changed if d.status != before[d.device_id][STATUS]]
        events.extend(status_events(moved))  # one event per tenant, not one per device
        gone = Refusal("unknown_device", "device was removed from the registry")
        return Outcome(events, refused=[(envelope, gone) for envelope in orphans])

    return prepare


def _validated(
    envelope: Envelope, schema: type[DevicePayload]
) -> tuple[int, DevicePayload | Exception]:
    try:
        return id(envelope), schema.model_validate(envelope.payload)
    # A ValidationError, or whatever else a validator let through: raised only if the message
    # is applied (DeviceBatch.payload), as when consumers validated in the transaction.
    except SoftTimeLimitExceeded:  # the task's own limit, not the payload's fault: at once
        raise
    except Exception as invalid:
        return id(envelope), invalid


def _changed_fields(states: list[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> list[str]:
    """The STATE_FIELDS that differ in any (now, before) pair of `_state`s: the batch's UPDATE
    sets only those. Each column costs its conversion and SQLite its binding, and `status` an
    index entry: a fleet's telemetry that changes only `last_seen` wrote its devices in about
    two thirds of the time (docs/performance.md)."""
    return [
        name
        for i, name in enumerate(STATE_FIELDS)
        if any(now[i] != then[i] for now, then in states)  # most stop at the first device
    ]


def received(envelope: Envelope) -> datetime:
    return datetime.fromtimestamp(envelope.received_at, tz=UTC)


def _last_heard(batch: DeviceBatch) -> list[tuple[Device, datetime]]:
    latest: dict[str, float] = {}  # compared as received, made a datetime once per device
    for envelope in batch.messages:
        heard = envelope.received_at
        if heard > latest.get(envelope.source_id, -math.inf):
            latest[envelope.source_id] = heard
    return [
        (batch.devices[source], datetime.fromtimestamp(heard, tz=UTC))
        for source, heard in latest.items()
    ]


def reading_fields(batch: DeviceBatch, envelope: Envelope, recorded_at: Any) -> dict[str, Any]:
    """The columns every reading row has (tenant, device, key, times), for core.bulk's
    `insert_rows`: a new dict each call, which the caller may add its kind's columns to."""
    device = batch.device(envelope)
    return {
        "tenant_id": device.tenant_id,
        "device_id": device.pk,
        "idempotency_key": envelope.key,
        "recorded_at": recorded_at,
        "received_at": received(envelope),
    }


def telemetry_updates(items: dict[str, dict[str, Any]], batch: DeviceBatch) -> list[Event]:
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
        Event(tenant, EventType.TELEMETRY_UPDATE, {"devices": devices, "messages": counts[tenant]})
        for tenant, devices in per_tenant.items()
    ]
