"""Adopting a dead member's session: no share of a shared subscription waits for a host that died.

Mosquitto 2.0 keeps assigning a share of a group's messages (`$share/<MQTT_SHARED_GROUP>/…`) to a
member that is gone, queued in its persistent session until the session expires (a day,
MQTT_SESSION_EXPIRY) or the member returns: a host that dies for good would strand its share. So
each member beats in Redis (`intake_status.beat_member`, at every status report), and a surviving
member that finds a peer silent for MQTT_SHARED_ADOPT_AFTER seconds adopts the peer's session:

1. it claims the peer in Redis, so that only one survivor adopts it;
2. it connects a second client under the peer's client id, without a clean start: the broker
   hands it the session, and sends what is queued there (and what the peer had in flight);
3. it unsubscribes the session from every filter, so nothing new is assigned to it, and drains
   what was queued through the normal intake path (an adopted `Subscriber`): validated, batched,
   enqueued, then acknowledged. A message the peer had handed on but not acknowledged arrives
   again; its idempotency key makes the repeat change nothing;
4. once nothing has arrived for ADOPT_QUIET_SECONDS and nothing is held, it disconnects with a
   session expiry of 0: the broker deletes the session, and the peer is forgotten.

The shared members' own session expiry stays long: the session is where a member's share waits
while no one has drained it (a member restarting, every member down), so it must not expire
first. If the peer comes back during the adoption, its connect takes the session over (Mosquitto
2.0.11 closes the adopter's connection, with no reason given) and the adopter leaves it at that:
an adopted session connects once; the peer subscribes again as it always does on connecting, and
beats, so it is not adopted again. An adopter that dies mid-way leaves the
session as it found it, less what it acknowledged; its claim expires and another member adopts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis
import structlog

from apps.core import intake_status, metrics
from apps.core.envelope import Envelope
from apps.core.redis_client import state_redis
from apps.core.tasks.base import enqueue

log = structlog.get_logger(__name__)

# How often a member looks for silent peers (it beats at the same pace).
LOOK_INTERVAL_SECONDS = intake_status.HEARTBEAT_INTERVAL_SECONDS
# An adopted session is drained when nothing has arrived for this long after its unsubscribe.
ADOPT_QUIET_SECONDS = 2.0
# The claim on a peer lapses this long after its adopter stopped renewing it (it died).
CLAIM_TTL_SECONDS = 60


class AdoptedSession(Protocol):
    """What the adopter needs of a `Subscriber(..., adopted=True)`."""

    ended: str | None  # why its connection is over (taken over, lost), else None

    def step(self) -> None: ...

    def drained(self) -> bool: ...

    def end_session(self) -> None: ...

    def leave(self) -> None: ...


@dataclass
class Adoption:
    member: str
    session: AdoptedSession
    next_claim_at: float


class Adopter:
    """Watches the group's members for one that went silent and adopts its session, one at a
    time. Stepped by its subscriber's loop."""

    def __init__(
        self,
        group: str,
        own_id: str,
        adopt_after: float,
        open_session: Callable[[str], AdoptedSession],
    ) -> None:
        self.group = group
        self.own_id = own_id
        self.adopt_after = adopt_after
        self.open_session = open_session
        self.current: Adoption | None = None
        self.next_look_at = 0.0
        # (member, its last beat) whose death made this adopter hand on the group's last
        # hand-offs again: once a death, however many attempts its adoption takes.
        self.sent_again_for: set[tuple[str, float]] = set()

    def step(self) -> None:
        now = time.monotonic()
        try:
            if self.current is not None:
                self._drain(self.current, now)
            elif now >= self.next_look_at:
                self.next_look_at = now + LOOK_INTERVAL_SECONDS
                self._look()
        except Exception as exc:  # Redis away: the adoption waits for it; the session keeps
            log.warning("cannot look after silent shared-group members", error=str(exc))

    def _look(self) -> None:
        client = state_redis()
        for silence in intake_status.silent_members(client, self.group, self.adopt_after):
            member = silence.member
            if member == self.own_id:
                continue
            if not intake_status.claim_adoption(client, member, self.own_id, CLAIM_TTL_SECONDS):
                continue  # another member adopts it
            log.warning(
                "a shared-group member is silent; adopting its session so its share is not "
                "stranded",
                member=member,
                silent_s=round(silence.seconds, 1),
                hint="nothing to do if that host is gone for good; if it is only slow, raise "
                "MQTT_SHARED_ADOPT_AFTER",
            )
            if (member, silence.last_beat) not in self.sent_again_for:
                self._send_again(client)
                self.sent_again_for.add((member, silence.last_beat))
            self.current = Adoption(
                member, self.open_session(member), time.monotonic() + LOOK_INTERVAL_SECONDS
            )
            return

    def _send_again(self, client: redis.Redis[str]) -> None:
        """Every member's last hand-offs, sent again: the dead host's workers may have taken
        some of them from Redis and died before recording them (intake_status.record_hand_off).
        What its workers had recorded comes back with the visibility timeout, or at once with
        `manage.py requeue --force`; these repeats cover that too, within their bound."""
        messages = 0
        for member in intake_status.members(client, self.group):
            for task, records in intake_status.hand_offs(client, member):
                enqueue(task, [Envelope.from_message(record) for record in records])
                messages += len(records)
        metrics.MQTT_MESSAGES_SENT_AGAIN.inc(messages)
        log.warning(
            "a host is presumed dead: the group's last hand-offs were sent again",
            messages=messages,
            hint="repeats are absorbed by their idempotency keys (bus_messages_duplicate_total)",
        )

    def _drain(self, adoption: Adoption, now: float) -> None:
        adoption.session.step()
        if adoption.session.ended is not None:
            self._finish(adoption, "interrupted", reason=adoption.session.ended)
        elif adoption.session.drained():
            adoption.session.end_session()
            intake_status.forget_member(state_redis(), self.group, adoption.member)
            self._finish(adoption, "drained")
        elif now >= adoption.next_claim_at:
            adoption.next_claim_at = now + LOOK_INTERVAL_SECONDS
            intake_status.claim_adoption(
                state_redis(), adoption.member, self.own_id, CLAIM_TTL_SECONDS
            )

    def _finish(self, adoption: Adoption, outcome: str, reason: str = "") -> None:
        self.current = None
        # A member that took its session back beats as it connects: look after that, not now.
        self.next_look_at = time.monotonic() + LOOK_INTERVAL_SECONDS
        metrics.MQTT_SESSIONS_ADOPTED.labels(outcome=outcome).inc()
        if outcome == "drained":
            log.info(
                "adopted session drained and ended; the broker assigns it nothing more",
                member=adoption.member,
            )
        else:
            log.warning(
                "adoption of a member's session ended before it was drained",
                member=adoption.member,
                reason=reason,
                hint="either the member came back and took its session over (it reads it "
                "itself), or the broker connection dropped: it is adopted again while silent",
            )
        intake_status.release_adoption(state_redis(), adoption.member, self.own_id)

    def stop(self) -> None:
        """Its subscriber stops: leave an adoption under way as it stands (the session keeps
        what was not acknowledged) and let another member claim it."""
        if self.current is None:
            return
        adoption, self.current = self.current, None
        adoption.session.leave()
        with contextlib.suppress(redis.RedisError):  # else the claim lapses by itself
            intake_status.release_adoption(state_redis(), adoption.member, self.own_id)
