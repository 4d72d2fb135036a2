"""The broadcast outbox: NOC events leave only after their effects commit, and always leave.

`broadcast_on_commit(events)` writes the events in the caller's transaction (one
`PendingBroadcast` row), hands them to the receivers of `events.events_recorded` (notifications)
and sends them to the channel layer once it commits; the events the layer took are then marked,
in one round trip, in a Redis set (`broadcasts_sent`, members `<row id>:<index>`).
Beat's `resend_broadcasts` (core/tasks/housekeeping.py) deletes the rows whose events are all
marked, and sends the unmarked events of rows older than BROADCAST_RESEND_AFTER_SECONDS: those
of a process that died between its commit and its sends (a killed pool process, the hard time
limit) and those the channel layer failed (Redis down at that moment).

So every committed effect is broadcast at least once. Twice when a send's outcome is unknown
(Redis died while answering it, a process died between the send and its mark): each event
carries its id (`<row id>:<index>`), the same at every sending, and each Daphne process shows
an id once (apps/noc/shown_once.py). A dashboard that missed anything (it was offline, too
slow) is brought level by the snapshot it gets on (re)connect.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import redis
import structlog
from django.db import transaction
from django.db.models import Func, IntegerField, QuerySet
from django.utils import timezone

from apps.core import metrics
from apps.core.bulk import json_value
from apps.core.events import Event, broadcast_events, events_recorded
from apps.core.models import PendingBroadcast
from apps.core.redis_client import state_redis

log = structlog.get_logger(__name__)

SENT_KEY = "broadcasts_sent"  # Redis DB 0: ids of PendingBroadcast rows whose events were sent
RESEND_BATCH = 500


def broadcast_on_commit(events: list[Event]) -> None:
    """Send `events` to the NOC when the current transaction commits, and resend them later if
    that sending is not confirmed. Call it inside the transaction of the effects they describe."""
    if not events:
        return
    events_recorded.send(sender=Event, events=events)
    fields = [_fields(event) for event in events]
    row = PendingBroadcast.objects.create(events=json_value(PendingBroadcast, fields))
    transaction.on_commit(lambda: _send(row.pk, events))


def _send(pk: int, events: list[Event], indexes: list[int] | None = None) -> int:
    """Send the events (those at `indexes`, else all), then mark those the layer took, in one
    round trip; the number sent. A mark that is not written (Redis down, the process dying
    before it) means a resend, which the NOC consumer shows once (same id)."""
    chosen = list(range(len(events))) if indexes is None else indexes
    ids = [f"{pk}:{i}" for i in chosen]
    taken: list[str] = []
    sent = broadcast_events(
        [events[i] for i in chosen], on_sent=lambda position: taken.append(ids[position]), ids=ids
    )
    if taken:
        with contextlib.suppress(redis.RedisError):
            state_redis().sadd(SENT_KEY, *taken)
    return sent


def resend(older_than_seconds: float) -> dict[str, int]:
    """Send the unmarked events of rows older than `older_than_seconds`; forget the rows whose
    events were all sent. What each did, by count."""
    client = state_redis()
    marked = _marks(client)
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    resent = 0
    stale = PendingBroadcast.objects.filter(created_at__lt=cutoff).order_by("pk")
    unsent = {
        pk: [i for i in range(size) if i not in marked.get(pk, set())]
        for pk, size in _sizes(stale, limit=RESEND_BATCH).items()
    }
    unsent = {pk: indexes for pk, indexes in unsent.items() if indexes}
    for pk, fields in PendingBroadcast.objects.filter(pk__in=list(unsent)).values_list(
        "pk", "events"
    ):
        resent += _send(pk, [_event(event) for event in fields], unsent[pk])
    if resent:
        metrics.BROADCASTS_RESENT.inc(resent)
        log.warning(
            "NOC events resent after their first sending was never confirmed",
            events=resent,
            hint="a worker died right after a commit, or the channel layer failed (Redis DB 2)",
        )
    marked = _marks(client)  # with the marks just written
    rows = _sizes(PendingBroadcast.objects.filter(pk__in=list(marked)))
    done = [pk for pk, size in rows.items() if set(range(size)) <= marked[pk]]
    forgotten = 0
    if done:
        forgotten, _ = PendingBroadcast.objects.filter(pk__in=done).delete()
    # The marks of rows now deleted, or deleted by an earlier run that could not remove them.
    stale_marks = [f"{pk}:{i}" for pk in marked if pk not in rows or pk in done for i in marked[pk]]
    if stale_marks:
        with contextlib.suppress(redis.RedisError):
            client.srem(SENT_KEY, *stale_marks)
    return {"resent": resent, "forgotten": forgotten}


class _Length(Func):
    """The number of elements of a JSON array, counted by the database: a row's events are a
    batch's device states (tens of kilobytes for a fleet's telemetry), and decoding every
    marked row's just to count them cost the general worker a few per cent of its CPU while
    the fleet reported (docs/performance.md)."""

    function = "json_array_length"  # SQLite
    output_field = IntegerField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, function="jsonb_array_length", **extra)

    def as_mysql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, function="JSON_LENGTH", **extra)


def _sizes(rows: QuerySet[PendingBroadcast], limit: int | None = None) -> dict[int, int]:
    """Row id -> how many events it holds, for `rows` (the first `limit` of them)."""
    return dict(rows.annotate(size=_Length("events")).values_list("pk", "size")[:limit])


def _marks(client: redis.Redis[str]) -> dict[int, set[int]]:
    """Row id -> the indexes of its events the channel layer took."""
    marked: dict[int, set[int]] = {}
    for member in client.smembers(SENT_KEY):
        pk, _, index = str(member).partition(":")
        marked.setdefault(int(pk), set()).add(int(index))
    return marked


def _fields(event: Event) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies the data, a tenth of a telemetry batch's CPU.
    return {"tenant_id": event.tenant_id, "message_type": event.message_type, "data": event.data}


def _event(fields: dict[str, Any]) -> Event:
    return Event(int(fields["tenant_id"]), fields["message_type"], fields["data"])
