"""What every message-processing task shares, written once.

A processing task receives a batch of envelopes (apps/mqtt/intake.py) and a consumer function
holding only domain logic. This module adds the rest:

- idempotency: the batch's keys are claimed in the ProcessedMessage ledger inside the same
  transaction as the effects, so a redelivered message, retried task or re-run batch adds
  nothing — no row, no alert, no broadcast;
- device resolution and last-seen bookkeeping (including clearing OFFLINE);
- bounded retries with exponential backoff and jitter, then per-message isolation so a single
  poison message is dead-lettered instead of its whole batch;
- metrics and the NOC broadcast after commit.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from celery import Task
from django.conf import settings
from django.db import transaction

from apps.core import dead_letters
from apps.core.models import DeadLetter, ProcessedMessage
from apps.core.tasks.celery_settings import TASK_QUEUES
from apps.devices.models import Device
from apps.monitoring import metrics
from apps.mqtt.intake import Envelope
from apps.noc.broadcast import NocEvent, broadcast_events

log = structlog.get_logger(__name__)


@dataclass
class Batch:
    """Fresh (never processed) messages of one kind, with their devices resolved."""

    kind: str
    messages: list[Envelope]
    devices: dict[str, Device]

    def device(self, envelope: Envelope) -> Device:
        return self.devices[envelope.source_id]


@dataclass
class Outcome:
    """What a consumer produced beyond rows: events for the NOC after commit."""

    events: list[NocEvent] = field(default_factory=list)


Consumer = Callable[[Batch], Outcome]


def retry_delay(retries: int) -> float:
    """Exponential backoff with jitter, capped at five minutes."""
    return float(min(300, 2**retries) * random.uniform(0.5, 1.5))  # noqa: S311


def received(envelope: Envelope) -> datetime:
    return datetime.fromtimestamp(envelope.received_at, tz=UTC)


if TYPE_CHECKING:
    _Task = Task[Any, Any]
else:
    _Task = Task  # celery's Task is generic only in its type stubs


class BusTask(_Task):
    """Celery base for processing tasks: delivery is at-least-once, effects exactly-once."""

    acks_late = True
    reject_on_worker_lost = True
    typing = False
    # run_batch bounds retries itself (TASK_MAX_RETRIES); Celery's own limit must not cut in.
    max_retries = None


# When even dead-lettering fails (the database is down), the batch comes back this much later.
OUTAGE_RETRY_SECONDS = 60


def run_batch(
    task: BusTask, kind: str, consumer: Consumer, raw: list[dict[str, Any]]
) -> dict[str, int]:
    queue = TASK_QUEUES[task.name].name
    labels = {"task": task.name.rsplit(".", 1)[-1], "queue": queue}
    metrics.TASKS_RECEIVED.labels(**labels).inc()
    started = time.perf_counter()
    envelopes = [Envelope.from_message(message) for message in raw]
    try:
        result = _process(kind, consumer, envelopes)
    except Exception as exc:  # SoftTimeLimitExceeded included: a hung batch is retried too
        if task.request.retries < settings.TASK_MAX_RETRIES:
            metrics.TASKS_RETRIED.labels(**labels).inc()
            log.warning(
                "batch failed; retrying",
                task=task.name,
                messages=len(envelopes),
                attempt=task.request.retries + 1,
                error=f"{type(exc).__name__}: {exc}",
            )
            raise task.retry(exc=exc, countdown=retry_delay(task.request.retries)) from exc
        # Out of retries: isolate, so only the messages that fail on their own are dead-lettered.
        try:
            result = _process_one_by_one(kind, consumer, envelopes, labels)
        except Exception as outage:
            # Not even a dead letter could be written. Never drop the batch: it goes back to
            # the broker (a new message, then this one is acknowledged) to try again later.
            log.error(
                "cannot process or dead-letter a batch; it will be retried",
                task=task.name,
                messages=len(envelopes),
                retry_in_s=OUTAGE_RETRY_SECONDS,
                error=f"{type(outage).__name__}: {outage}",
                hint="check the database (DATABASE_URL)",
            )
            raise task.retry(exc=outage, countdown=OUTAGE_RETRY_SECONDS) from outage
    metrics.TASK_RUNTIME.labels(**labels).observe(time.perf_counter() - started)
    metrics.TASKS_SUCCEEDED.labels(**labels).inc()
    return result


def _process(kind: str, consumer: Consumer, envelopes: list[Envelope]) -> dict[str, int]:
    with transaction.atomic():
        fresh = _claim(kind, envelopes)
        # Locked for the transaction: workers of several queues update the same devices
        # (PostgreSQL; SQLite serialises writers anyway). Ordered to avoid deadlocks.
        devices = {
            device.device_id: device
            for device in Device.objects.select_for_update(of=("self",))
            .select_related("tenant")
            .filter(device_id__in={envelope.source_id for envelope in fresh})
            .order_by("pk")
        }
        orphans = [envelope for envelope in fresh if envelope.source_id not in devices]
        if orphans:
            _dead_letter(orphans, "unknown_device", "device was removed from the registry")
        batch = Batch(kind, [e for e in fresh if e.source_id in devices], devices)
        outcome = consumer(batch) if batch.messages else Outcome()
        outcome.events.extend(_touch_devices(batch))
        transaction.on_commit(lambda: _after_commit(kind, batch.messages, outcome.events))
    duplicates = len(envelopes) - len(fresh)
    if duplicates:
        metrics.MESSAGES_DUPLICATE.labels(kind=kind).inc(duplicates)
    metrics.MESSAGES_PROCESSED.labels(kind=kind).inc(len(batch.messages))
    return {"processed": len(batch.messages), "duplicates": duplicates, "dead": len(orphans)}


def _claim(kind: str, envelopes: list[Envelope]) -> list[Envelope]:
    """The envelopes not processed before, recorded as processed (same transaction as effects)."""
    seen = set(
        ProcessedMessage.objects.filter(key__in={e.key for e in envelopes}).values_list(
            "key", flat=True
        )
    )
    fresh: list[Envelope] = []
    for envelope in envelopes:
        if envelope.key not in seen:
            seen.add(envelope.key)
            fresh.append(envelope)
    ProcessedMessage.objects.bulk_create([ProcessedMessage(key=e.key, kind=kind) for e in fresh])
    return fresh


def _touch_devices(batch: Batch) -> list[NocEvent]:
    """Last seen for every device heard from; a device that was OFFLINE is back."""
    from apps.devices.status import mark_seen

    latest: dict[str, datetime] = {}
    for envelope in batch.messages:
        seen = received(envelope)
        if envelope.source_id not in latest or seen > latest[envelope.source_id]:
            latest[envelope.source_id] = seen
    return mark_seen([(batch.devices[source], seen) for source, seen in latest.items()])


def _after_commit(kind: str, messages: list[Envelope], events: list[NocEvent]) -> None:
    broadcast_events(events)
    now = time.time()
    histogram = metrics.END_TO_END_LATENCY.labels(kind=kind)
    for envelope in messages:
        histogram.observe(max(0.0, now - envelope.received_at))


def _process_one_by_one(
    kind: str, consumer: Consumer, envelopes: list[Envelope], labels: dict[str, str]
) -> dict[str, int]:
    totals = {"processed": 0, "duplicates": 0, "dead": 0}
    for envelope in envelopes:
        try:
            result = _process(kind, consumer, [envelope])
        except Exception as exc:  # this message alone fails: keep it, move on
            log.error(
                "message failed after retries; dead-lettered",
                key=envelope.key,
                topic=envelope.topic,
                error=f"{type(exc).__name__}: {exc}",
                hint="inspect with manage.py dead_letters list --reason processing_failed",
            )
            metrics.TASKS_FAILED.labels(**labels).inc()
            with transaction.atomic():
                _dead_letter([envelope], "processing_failed", f"{type(exc).__name__}: {exc}")
            totals["dead"] += 1
            continue
        for name, value in result.items():
            totals[name] += value
    return totals


def _dead_letter(envelopes: list[Envelope], reason: str, detail: str) -> None:
    dead_letters.store(
        [
            dead_letters.Letter(
                stage=DeadLetter.Stage.PROCESSING,
                reason=reason,
                detail=detail,
                topic=envelope.topic,
                payload=json.dumps(envelope.payload).encode(),
                received_at=envelope.received_at,
                envelope=envelope.to_message(),
            )
            for envelope in envelopes
        ]
    )
