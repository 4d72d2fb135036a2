"""What every message-processing task shares, written once: the generic batch runner.

A processing task receives a batch of envelopes and a handler holding the rest (for device
messages, apps/mqtt/consumers/base.py `with_devices`), in two steps: what reads no row (parsing,
validating) before the transaction, the rest in it. This module adds what every batch needs:

- idempotency: the batch's keys are claimed in the ledger (ledger.py) inside the same
  transaction as the handler's effects, so a redelivered message, retried task or re-run batch
  adds nothing — no row, no alert, no broadcast;
- dead letters for the messages the handler refuses, in that same transaction;
- bounded retries with exponential backoff and jitter, then per-message isolation so a single
  poison message is dead-lettered instead of its whole batch;
- bounded deliveries: a batch that keeps killing its worker (a crash, the hard time limit) is
  split into single messages after TASK_MAX_DELIVERIES, and a single one is dead-lettered;
- metrics, and the NOC broadcast of the handler's events after commit, through the outbox
  (core/outbox.py) so that a worker dying right after a commit cannot lose them.

`enqueue` is the other end: how the subscriber and replay hand envelopes to a task.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import redis
import structlog
from celery import Task, current_app
from celery.exceptions import Reject
from django.conf import settings
from django.db import transaction

from apps.core import dead_letters, metrics, outbox, task_json, write_priority
from apps.core.backoff import backoff_delay
from apps.core.envelope import Envelope
from apps.core.events import Event
from apps.core.models import DeadLetter
from apps.core.redis_client import state_redis
from apps.core.tasks import ledger
from apps.core.tasks.celery_settings import TASK_QUEUES, QueueSpec

log = structlog.get_logger(__name__)

# When even dead-lettering fails (the database is down), the batch comes back this much later.
OUTAGE_RETRY_SECONDS = 60
# Dead-letter reasons of messages dead-lettered after their transaction rolled back: unlike a
# handler's refusals (dead-lettered in the transaction that claimed their keys), they hold no
# claim in the ledger. A claim found for one belongs to another copy of the message, applied.
POISON = "poison"
PROCESSING_FAILED = "processing_failed"
UNCLAIMED_REASONS = frozenset({POISON, PROCESSING_FAILED})
# `task_deliveries:<task id>:<retry>`: how often a worker took this delivery (Redis, DB 0).
DELIVERIES_KEY_PREFIX = "task_deliveries:"
DELIVERIES_KEY_TTL_SECONDS = 2 * 86400


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


# The step of a batch's work that runs in its transaction: given the fresh envelopes (those the
# ledger claimed; the same objects the Handler was given, or some of them), the effects, and
# what they produced.
Apply = Callable[[list[Envelope]], Outcome]
# A handler is called with the whole batch before the transaction and returns its Apply. What it
# does then (validating payloads, say) is done outside the writer's hold: on SQLite a general
# batch holds the one writer for its whole transaction, and critical alerts and the other
# general worker wait for it. Called again for each message if the batch is split.
Handler = Callable[[list[Envelope]], Apply]


def enqueue(task_name: str, envelopes: list[Envelope]) -> QueueSpec:
    """Hand envelopes to one task, in Redis when this returns; the queue it went to.

    Routing (queue and priority) comes from task_routes in celery_settings. One attempt, bounded
    by the broker's socket timeouts: a caller that fails holds the messages and retries itself.
    The envelopes go into the body as they are: the codec (core/task_json.py) writes each as
    its `to_message()` dict, field for field, without building that dict first.
    """
    current_app.send_task(
        task_name,
        args=[envelopes],
        retry=False,
        **_publish_options(envelopes),
    )
    return TASK_QUEUES[task_name]


def _publish_options(messages: list[Any]) -> dict[str, Any]:
    """How every task message of a batch is written, first sending, retry or split alike.

    Its body in core/task_json.py's codec, compressed when large. What it shows of its
    arguments (`celery inspect`, Flower, failure logs): the count, never the devices' payloads.
    Celery's default, a repr of up to 1 KiB of them, also cost about a fifth of each hand-off's
    CPU."""
    noun = "message" if len(messages) == 1 else "messages"
    return {
        "serializer": task_json.SERIALIZER,
        "compression": task_json.compression_for(len(messages)),
        "argsrepr": f"[<{len(messages)} {noun}>]",
        "kwargsrepr": "{}",
    }


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
    deliveries = _count_delivery(task)
    if deliveries > settings.TASK_MAX_DELIVERIES:
        return _stop_the_loop(task, kind, raw, deliveries, labels)
    envelopes, unreadable = _decode(raw)
    try:
        result = _process(TASK_QUEUES[task.name], kind, handler, envelopes, unreadable)
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
            _forget_deliveries(task)  # the retry is a new delivery, counted afresh
            retry_later(task, exc, retry_delay(task.request.retries))
        # Out of retries: isolate, so only the messages that fail on their own are dead-lettered.
        try:
            result = _process_one_by_one(
                TASK_QUEUES[task.name], kind, handler, envelopes, unreadable, labels
            )
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
    _forget_deliveries(task)
    return result


def _deliveries_key(task: BusTask) -> str:
    return f"{DELIVERIES_KEY_PREFIX}{task.request.id}:{task.request.retries}"


def _count_delivery(task: BusTask) -> int:
    """How many times a worker has taken this delivery, this one included. A worker that dies
    mid-batch (crash, hard time limit) hands it back uncounted by Celery; this counts it."""
    try:
        with state_redis().pipeline() as pipe:
            pipe.incr(_deliveries_key(task))
            pipe.expire(_deliveries_key(task), DELIVERIES_KEY_TTL_SECONDS)
            count, _ = pipe.execute()
    except redis.RedisError as exc:  # not counted this time; the batch is still processed
        log.warning("could not count a task delivery", task=task.name, error=str(exc))
        return 1
    return int(count)


def _forget_deliveries(task: BusTask) -> None:
    with contextlib.suppress(redis.RedisError):  # else the key expires by itself
        state_redis().delete(_deliveries_key(task))


def _stop_the_loop(
    task: BusTask, kind: str, raw: list[Any], deliveries: int, labels: dict[str, str]
) -> dict[str, int]:
    """A batch whose earlier deliveries all killed their worker: split it into one task per
    message, so only the message that kills is held back; dead-letter a message alone."""
    limit = TASK_QUEUES[task.name].time_limit
    if len(raw) > 1:
        try:
            for message in raw:
                current_app.send_task(
                    task.name, args=[[message]], retry=False, **_publish_options([message])
                )
        except Exception as exc:  # some may be sent twice later: their keys absorb it
            raise Reject(exc, requeue=True) from exc
        log.error(
            "batch killed its worker on every delivery; split into single messages",
            task=task.name,
            messages=len(raw),
            deliveries=deliveries - 1,
            hint=f"a crash or the hard time limit ({limit} s); see the worker's log",
        )
        _forget_deliveries(task)
        return {"processed": 0, "duplicates": 0, "dead": 0, "split": len(raw)}
    envelopes, unreadable = _decode(raw)
    poison = Refusal(
        POISON,
        f"its processing killed the worker {deliveries - 1} times (a crash or the hard time "
        f"limit of {limit} s); not tried again. Replay it once the cause is fixed.",
    )
    try:
        with transaction.atomic():
            _dead_letter_unreadable(unreadable)
            _dead_letter([(envelope, poison) for envelope in envelopes])
    except Exception as outage:
        retry_later(task, outage, OUTAGE_RETRY_SECONDS)
    log.error(
        "message killed its worker on every delivery; dead-lettered",
        task=task.name,
        keys=[envelope.key for envelope in envelopes],
        hint="manage.py dead_letters list --reason poison",
    )
    metrics.TASKS_FAILED.labels(**labels).inc()
    _forget_deliveries(task)
    return {"processed": 0, "duplicates": 0, "dead": len(raw)}


def retry_later(task: Task[Any, Any], exc: Exception, countdown: float) -> NoReturn:
    """Retry this delivery later: Celery publishes a new message, then acknowledges this one.

    When that publish fails (Redis out of memory, the connection lost), Celery would drop the
    delivery (Reject, requeue=False). It is put back instead or, if even that fails, left
    unacknowledged for the broker to hand out again after its visibility timeout.
    """
    # A batch's retry is written as its first sending was (Celery rebuilds the message from
    # the request, which keeps neither argsrepr nor the codec and compression).
    args = task.request.args or []
    options = _publish_options(args[0]) if isinstance(task, BusTask) and args else {}
    try:
        retry = task.retry(exc=exc, countdown=countdown, throw=False, **options)
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
    queue: QueueSpec,
    kind: str,
    handler: Handler,
    envelopes: list[Envelope],
    unreadable: list[Any],
) -> dict[str, int]:
    """Run the batch in one transaction; a general one that a critical transaction preempted
    (core/write_priority.py) rolled back whole, and runs again once that one is done. The
    handler's first step runs once, before any of it."""
    apply = handler(envelopes)
    turn_for = write_priority.urgent if queue.urgent else write_priority.yielding
    while True:
        with turn_for() as turn:
            try:
                return _process_once(turn, kind, apply, envelopes, unreadable)
            except Exception:
                if not turn.preempted:
                    raise
        metrics.TRANSACTIONS_PREEMPTED.labels(queue=queue.name).inc()
        write_priority.wait_until_lowered()


def _process_once(
    turn: write_priority.Turn,
    kind: str,
    apply: Apply,
    envelopes: list[Envelope],
    unreadable: list[Any],
) -> dict[str, int]:
    with transaction.atomic():
        transaction.on_commit(turn.release)  # first: the writer is free again before the rest
        _dead_letter_unreadable(unreadable)
        fresh = ledger.claim(kind, envelopes)
        outcome = apply(fresh) if fresh else Outcome()
        _dead_letter(outcome.refused)
        refused_keys = {envelope.key for envelope, _ in outcome.refused}
        applied = [envelope for envelope in fresh if envelope.key not in refused_keys]
        outbox.broadcast_on_commit(outcome.events)
        transaction.on_commit(lambda: _observe_latency(kind, applied))
    duplicates = len(envelopes) - len(fresh)
    if duplicates:
        metrics.MESSAGES_DUPLICATE.labels(kind=kind).inc(duplicates)
    metrics.MESSAGES_PROCESSED.labels(kind=kind).inc(len(applied))
    dead = len(refused_keys) + len(unreadable)
    return {"processed": len(applied), "duplicates": duplicates, "dead": dead}


def _observe_latency(kind: str, applied: list[Envelope]) -> None:
    """From receipt by the subscriber to effects committed and broadcast."""
    now = time.time()
    metrics.observe_many(
        metrics.END_TO_END_LATENCY.labels(kind=kind),
        [max(0.0, now - envelope.received_at) for envelope in applied],
    )


def _process_one_by_one(
    queue: QueueSpec,
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
            result = _process(queue, kind, handler, [envelope], [])
        except Exception as exc:  # this message alone fails: keep it, move on
            log.error(
                "message failed after retries; dead-lettered",
                key=envelope.key,
                topic=envelope.topic,
                error=f"{type(exc).__name__}: {exc}",
                hint="inspect with manage.py dead_letters list --reason processing_failed",
            )
            metrics.TASKS_FAILED.labels(**labels).inc()
            failed = Refusal(PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")
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
