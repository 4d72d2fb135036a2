"""What every message-processing task shares, written once: the generic batch runner.

A processing task receives a batch of envelopes and a handler holding the rest (for device
messages, apps/mqtt/consumers/base.py `with_devices`). This module adds what every batch needs:

- idempotency: the batch's keys are claimed in the ledger (ledger.py) inside the same
  transaction as the handler's effects, so a redelivered message, retried task or re-run batch
  adds nothing — no row, no alert, no broadcast;
- dead letters for the messages the handler refuses, in that same transaction;
- bounded retries with exponential backoff and jitter, then per-message isolation so a single
  poison message is dead-lettered instead of its whole batch;
- metrics, and the NOC broadcast of the handler's events after commit.

`enqueue` is the other end: how the subscriber and replay hand envelopes to a task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import structlog
from celery import Task, current_app
from celery.exceptions import Reject
from django.conf import settings
from django.db import transaction

from apps.core import dead_letters, metrics
from apps.core.backoff import backoff_delay
from apps.core.envelope import Envelope
from apps.core.events import Event, broadcast_events
from apps.core.models import DeadLetter
from apps.core.tasks import ledger
from apps.core.tasks.celery_settings import TASK_QUEUES, QueueSpec

log = structlog.get_logger(__name__)

# When even dead-lettering fails (the database is down), the batch comes back this much later.
OUTAGE_RETRY_SECONDS = 60


@dataclass(frozen=True)
class Refusal:
    """Why a handler will never apply a message (it is dead-lettered with this reason)."""

    reason: str
    detail: str


@dataclass
class Outcome:
    """What a handler produced beyond rows: events for the NOC after commit, and refusals."""

    events: list[Event] = field(default_factory=list)
    refused: list[tuple[Envelope, Refusal]] = field(default_factory=list)


Handler = Callable[[list[Envelope]], Outcome]


def enqueue(task_name: str, envelopes: list[Envelope]) -> QueueSpec:
    """Hand envelopes to one task, in Redis when this returns; the queue it went to.

    Routing (queue and priority) comes from task_routes in celery_settings. One attempt, bounded
    by the broker's socket timeouts: a caller that fails holds the messages and retries itself.
    """
    messages = [envelope.to_message() for envelope in envelopes]
    current_app.send_task(task_name, args=[messages], retry=False)
    return TASK_QUEUES[task_name]


def retry_delay(retries: int) -> float:
    """Seconds before a task's retry number `retries`: 1 s doubling up to five minutes, spread
    half either way so a batch's retries do not line up with everything that failed with it."""
    return backoff_delay(retries, base=1.0, cap=300.0, jitter=(0.5, 1.5))


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


def run_batch(
    task: BusTask, kind: str, handler: Handler, raw: list[dict[str, Any]]
) -> dict[str, int]:
    queue = TASK_QUEUES[task.name].name
    labels = {"task": task.name.rsplit(".", 1)[-1], "queue": queue}
    metrics.TASKS_RECEIVED.labels(**labels).inc()
    started = time.perf_counter()
    envelopes, unreadable = _decode(raw)
    try:
        result = _process(kind, handler, envelopes, unreadable)
    except Exception as exc:  # SoftTimeLimitExceeded included: a hung batch is retried too
        if task.request.retries < settings.TASK_MAX_RETRIES:
            metrics.TASKS_RETRIED.labels(**labels).inc()
            log.warning(
                "batch failed; retrying",
                task=task.name,
                messages=len(raw),
                attempt=task.request.retries + 1,
                error=f"{type(exc).__name__}: {exc}",
            )
            retry_later(task, exc, retry_delay(task.request.retries))
        # Out of retries: isolate, so only the messages that fail on their own are dead-lettered.
        try:
            result = _process_one_by_one(kind, handler, envelopes, unreadable, labels)
        except Exception as outage:
            # Not even a dead letter could be written. Never drop the batch: it goes back to
            # the broker (a new message, then this one is acknowledged) to try again later.
            log.error(
                "cannot process or dead-letter a batch; it will be retried",
                task=task.name,
                messages=len(raw),
                retry_in_s=OUTAGE_RETRY_SECONDS,
                error=f"{type(outage).__name__}: {outage}",
                hint="check the database (DATABASE_URL)",
            )
            retry_later(task, outage, OUTAGE_RETRY_SECONDS)
    metrics.TASK_RUNTIME.labels(**labels).observe(time.perf_counter() - started)
    metrics.TASKS_SUCCEEDED.labels(**labels).inc()
    return result


def retry_later(task: Task[Any, Any], exc: Exception, countdown: float) -> NoReturn:
    """Retry this delivery later: Celery publishes a new message, then acknowledges this one.

    When that publish fails (Redis out of memory, the connection lost), Celery would drop the
    delivery (Reject, requeue=False). It is put back instead or, if even that fails, left
    unacknowledged for the broker to hand out again after its visibility timeout.
    """
    try:
        retry = task.retry(exc=exc, countdown=countdown, throw=False)
    except Reject as unpublished:
        reason = unpublished.args[0] if unpublished.args else unpublished  # the publish error
        log.error(
            "could not publish the retry of a task; it stays in the broker",
            task=task.name,
            task_id=task.request.id,
            error=f"{type(reason).__name__}: {reason}",
            hint="check Redis (REDIS_URL): memory (maxmemory), connection",
        )
        raise Reject(reason, requeue=True) from exc
    raise retry from exc


def _decode(raw: list[Any]) -> tuple[list[Envelope], list[Any]]:
    """The envelopes, and the messages no envelope can be made of (another release's, say)."""
    envelopes: list[Envelope] = []
    unreadable: list[Any] = []
    for message in raw:
        try:
            envelopes.append(Envelope.from_message(message))
        except (TypeError, ValueError):
            unreadable.append(message)
    return envelopes, unreadable


def _process(
    kind: str, handler: Handler, envelopes: list[Envelope], unreadable: list[Any]
) -> dict[str, int]:
    with transaction.atomic():
        _dead_letter_unreadable(unreadable)
        fresh = ledger.claim(kind, envelopes)
        outcome = handler(fresh) if fresh else Outcome()
        _dead_letter(outcome.refused)
        refused_keys = {envelope.key for envelope, _ in outcome.refused}
        applied = [envelope for envelope in fresh if envelope.key not in refused_keys]
        transaction.on_commit(lambda: _after_commit(kind, applied, outcome.events))
    duplicates = len(envelopes) - len(fresh)
    if duplicates:
        metrics.MESSAGES_DUPLICATE.labels(kind=kind).inc(duplicates)
    metrics.MESSAGES_PROCESSED.labels(kind=kind).inc(len(applied))
    dead = len(refused_keys) + len(unreadable)
    return {"processed": len(applied), "duplicates": duplicates, "dead": dead}


def _after_commit(kind: str, applied: list[Envelope], events: list[Event]) -> None:
    broadcast_events(events)
    now = time.time()
    histogram = metrics.END_TO_END_LATENCY.labels(kind=kind)
    for envelope in applied:
        histogram.observe(max(0.0, now - envelope.received_at))


def _process_one_by_one(
    kind: str,
    handler: Handler,
    envelopes: list[Envelope],
    unreadable: list[Any],
    labels: dict[str, str],
) -> dict[str, int]:
    with transaction.atomic():
        _dead_letter_unreadable(unreadable)
    totals = {"processed": 0, "duplicates": 0, "dead": len(unreadable)}
    for envelope in envelopes:
        try:
            result = _process(kind, handler, [envelope], [])
        except Exception as exc:  # this message alone fails: keep it, move on
            log.error(
                "message failed after retries; dead-lettered",
                key=envelope.key,
                topic=envelope.topic,
                error=f"{type(exc).__name__}: {exc}",
                hint="inspect with manage.py dead_letters list --reason processing_failed",
            )
            metrics.TASKS_FAILED.labels(**labels).inc()
            failed = Refusal("processing_failed", f"{type(exc).__name__}: {exc}")
            with transaction.atomic():
                _dead_letter([(envelope, failed)])
            totals["dead"] += 1
            continue
        for name, value in result.items():
            totals[name] += value
    return totals


def _dead_letter(refused: list[tuple[Envelope, Refusal]]) -> None:
    dead_letters.store(
        [
            dead_letters.Letter(
                stage=DeadLetter.Stage.PROCESSING,
                reason=refusal.reason,
                detail=refusal.detail,
                topic=envelope.topic,
                payload=json.dumps(envelope.payload).encode(),
                received_at=envelope.received_at,
                envelope=envelope.to_message(),
            )
            for envelope, refusal in refused
        ]
    )


def _dead_letter_unreadable(messages: list[Any]) -> None:
    """Keep what can be read of each: a replay takes topic and payload through intake again,
    which builds an envelope this release can read."""
    now = time.time()
    letters = []
    for message in messages:
        fields = message if isinstance(message, dict) else {}
        topic = fields.get("topic")
        received_at = fields.get("received_at")
        letters.append(
            dead_letters.Letter(
                stage=DeadLetter.Stage.PROCESSING,
                reason="unreadable_envelope",
                detail="the task message is not an envelope this release reads "
                f"(fields: {', '.join(sorted(map(str, fields))) or type(message).__name__}); "
                "replay it after the upgrade: manage.py dead_letters replay",
                topic=topic if isinstance(topic, str) else "",
                payload=json.dumps(fields.get("payload", message), default=str).encode(),
                received_at=received_at if isinstance(received_at, int | float) else now,
            )
        )
    dead_letters.store(letters)
