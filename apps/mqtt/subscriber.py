"""The MQTT subscriber: the bus's front door.

A thin loop of small steps: read from the broker, validate each message (apps/mqtt/intake.py),
group valid ones per topic kind, hand each group to Celery as one task, and acknowledge the
MQTT messages only once that task is in Redis. Rejected messages go to the dead-letter store first,
then are acknowledged. Whatever fails, an unacknowledged message stays with the broker, which
redelivers it; idempotency keys make the redelivery harmless.

It holds one persistent MQTT 5 session (fixed client id, clean start off, session expiry), so
QoS 1 messages published while it is down are delivered when it returns. Run it with
`python manage.py mqtt_subscriber`.

Alerts must never wait behind telemetry: not in the broker's queue for a session, not behind a
receive-maximum window full of unacknowledged telemetry, not behind telemetry in this loop. So
`make run` and the systemd units run two of these processes, each with a session of its own
(`--lane`, Lane below): `urgent` reads the immediate kinds of the topic table (alert/) as
`<MQTT_CLIENT_ID>-urgent`, `routine` reads the rest as MQTT_CLIENT_ID. `all` (the default) reads
everything on one session. A lane decides only what its session subscribes to; whatever kind a
session is delivered (a message queued before the lanes were split, say), it is processed alike.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import FrameType
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import redis
import structlog
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from apps.core import dead_letters, intake_status, metrics
from apps.core.backoff import Backoff
from apps.core.envelope import Envelope
from apps.core.models import DeadLetter
from apps.core.redis_client import state_redis
from apps.core.tasks.base import enqueue
from apps.core.tasks.celery_settings import TASK_QUEUES, broker_list_keys
from apps.mqtt.adoption import ADOPT_QUIET_SECONDS, Adopter
from apps.mqtt.announce import announce_critical
from apps.mqtt.client import AppClient, app_client
from apps.mqtt.intake import Intake, Reason, Rejection
from apps.mqtt.topics import KINDS_BY_NAME, TOPIC_KINDS, TopicKind

log = structlog.get_logger(__name__)

# Topic prefixes the bus accepts, with the QoS of their subscription: one per row of the topic
# table (apps/mqtt/topics.py), which also says each kind's task and whether it is batched.
ALLOWED_TOPIC_PREFIXES: dict[str, int] = {kind.prefix: 1 for kind in TOPIC_KINDS}
PAUSE_CHECK_SECONDS = 1.0
IDLE_LOOP_SECONDS = 0.1
HEARD_NOTE_SECONDS = 1.0
# The routine lane's CPU priority, the general worker's (QueueSpec.nice, .idle: SCHED_IDLE): on
# a busy machine, telemetry intake makes way for the alert path (urgent lane, critical worker,
# Daphne) at once.
ROUTINE_NICE = 5
# While its queue is backed up, a batch keeps gathering (see Subscriber._due); this long at most.
BACKLOG_MAX_WAIT_SECONDS = 1.0
# Messages read from the socket in one turn of the loop before the due batches are looked at
# (see Subscriber._network): the turn's fixed costs are paid once per burst, not per message.
READ_BURST_MESSAGES = 100


class Lane(StrEnum):
    """Which topic kinds a subscriber's session reads (`manage.py mqtt_subscriber --lane`)."""

    ALL = "all"
    URGENT = "urgent"  # the immediate kinds (alerts), on a session of their own
    ROUTINE = "routine"  # the others (telemetry, GPS, sensors, health)

    def reads(self, kind: TopicKind) -> bool:
        return self is Lane.ALL or kind.immediate == (self is Lane.URGENT)

    def client_id(self, base: str) -> str:
        """The lane's session: the urgent one is named after MQTT_CLIENT_ID (`base`), with a
        suffix settings reserves for it (DEVICE_RESERVED_IDS), so no device can take it."""
        return base + settings.MQTT_URGENT_CLIENT_ID_SUFFIX if self is Lane.URGENT else base


@dataclass(frozen=True)
class SubscriberConfig:
    host: str
    port: int
    client_id: str
    session_expiry: int
    keepalive: int
    shared_group: str
    reconnect_max_delay: int
    receive_maximum: int
    adopt_after: int
    batch_size: int
    batch_max_size: int
    batch_interval: float
    hold_max_messages: int
    hold_max_bytes: int
    lane: Lane = Lane.ALL

    @classmethod
    def from_settings(cls, lane: Lane = Lane.ALL) -> SubscriberConfig:
        return cls(
            lane=lane,
            host=settings.MQTT_HOST,
            port=settings.MQTT_PORT,
            client_id=lane.client_id(settings.MQTT_CLIENT_ID),
            session_expiry=settings.MQTT_SESSION_EXPIRY,
            keepalive=settings.MQTT_KEEPALIVE,
            shared_group=settings.MQTT_SHARED_GROUP,
            reconnect_max_delay=settings.MQTT_RECONNECT_MAX_DELAY,
            receive_maximum=settings.MQTT_RECEIVE_MAXIMUM,
            adopt_after=settings.MQTT_SHARED_ADOPT_AFTER,
            batch_size=settings.MQTT_BATCH_SIZE,
            batch_max_size=settings.MQTT_BATCH_MAX_SIZE,
            batch_interval=settings.MQTT_BATCH_INTERVAL_MS / 1000,
            hold_max_messages=settings.MQTT_HOLD_MAX_MESSAGES,
            hold_max_bytes=settings.MQTT_HOLD_MAX_BYTES,
        )

    @property
    def kinds(self) -> list[str]:
        return [kind.name for kind in TOPIC_KINDS if self.lane.reads(kind)]

    def _filter(self, prefix: str) -> str:
        share = f"$share/{self.shared_group}/" if self.shared_group else ""
        return f"{share}{prefix}#"

    def subscriptions(self) -> list[tuple[str, SubscribeOptions]]:
        """Each of the lane's prefixes' filter and options. Retained messages are not sent on
        subscribing: they were delivered live when published, and every reconnect would replay
        them."""
        prefixes = dict.fromkeys(kind.prefix for kind in TOPIC_KINDS if self.lane.reads(kind))
        return [
            (
                self._filter(prefix),
                SubscribeOptions(
                    qos=ALLOWED_TOPIC_PREFIXES[prefix],
                    retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND,
                ),
            )
            for prefix in prefixes  # one each: rows of a prefix share it (topics.py)
        ]

    def every_filter(self) -> set[str]:
        """Every filter a session of this group may hold, of any lane, shared or not."""
        every = {f"{prefix}#" for prefix in ALLOWED_TOPIC_PREFIXES}
        return every | {self._filter(prefix) for prefix in ALLOWED_TOPIC_PREFIXES}

    def stale_filters(self) -> list[str]:
        """Filters a kept session may hold from an earlier configuration and this one does not
        use: plain ones from before MQTT_SHARED_GROUP was set (they would keep delivering every
        message to this member alone), the other lane's (from before the lanes were split)."""
        wanted = {topic for topic, _options in self.subscriptions()}
        return sorted(self.every_filter() - wanted)

    @property
    def members(self) -> str:
        """The members this one may adopt (apps/mqtt/adoption.py): the group's, of its lane."""
        return f"{self.shared_group}/{self.lane.value}"


# Delivery and Unchecked are built for every message read: as msgspec structs, 0.15 us each
# where a frozen dataclass's __init__ (object.__setattr__ per field) took 0.5-0.6 us.
class Delivery(msgspec.Struct, frozen=True):
    """An MQTT message we owe the broker an acknowledgement for, on a given connection."""

    mid: int
    qos: int
    connection: int


class Unchecked(msgspec.Struct, frozen=True):
    """A received message not yet validated."""

    topic: str
    payload: bytes
    received_at: float
    delivery: Delivery


@dataclass
class PendingTask:
    """Validated messages of one topic kind, to be sent as one task; their deliveries are
    acknowledged once it is in Redis."""

    envelopes: list[Envelope] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    opened_at: float = 0.0
    payload_bytes: int = 0


@dataclass(frozen=True)
class HeldRejection:
    """A rejected message waiting to be dead-lettered: only what the store keeps of it."""

    rejection: Rejection
    payload_size: int
    delivery: Delivery


@dataclass(frozen=True)
class HandedOff:
    """A task this subscriber put in Redis, kept to be sent again if Redis may have lost it."""

    task: str
    envelopes: list[Envelope]


class Subscriber:
    def __init__(
        self, config: SubscriberConfig, intake: Intake | None = None, *, adopted: bool = False
    ) -> None:
        """`adopted`: the session of a silent member of the group (apps/mqtt/adoption.py), to
        drain and end: it subscribes to nothing, connects once, and reports no status."""
        self.config = config
        self.intake = intake or Intake()
        self.adopted = adopted
        self.connect_tried = False
        self.released_at: float | None = None  # adopted: when its unsubscribe was acknowledged
        self.ended: str | None = None  # adopted: why its connection is over
        self.adopter = (
            Adopter(config.members, config.client_id, config.adopt_after, self._adopt)
            if config.shared_group and config.adopt_after and not adopted
            else None
        )
        self.stopping = False
        self.last_message_at: float | None = None
        self.connected_since: float | None = None
        self.connection = 0  # incremented per connection: acks never cross connections
        self.pending: dict[str, PendingTask] = defaultdict(PendingTask)  # by topic kind
        self.rejections: list[HeldRejection] = []
        self.recheck: list[Unchecked] = []
        # What the three above hold, bounded by MQTT_HOLD_MAX_MESSAGES / _BYTES (see _shed).
        self.held_messages = 0
        self.held_bytes = 0
        self.shedding = False
        self.next_probe_at = 0.0
        self.probe_backoff = Backoff(1, 15)
        self.retry_flush_at = 0.0
        self.flush_backoff = Backoff(0.5, 30)
        self.connect_backoff = Backoff(1, config.reconnect_max_delay)
        self.next_connect_at = 0.0
        self.next_report_at = 0.0
        self.next_pause_check_at = 0.0
        self.paused = False
        self.hand_off_failing = False
        # The last hold_max_messages messages handed on, sent again after Redis restarts or
        # fails a hand-off (see _send_again). Their keys make the repeats change nothing.
        self.handed_off: deque[HandedOff] = deque()
        self.handed_off_messages = 0
        self.send_again = False
        self.redis_run_id: str | None = None
        self.send_again_requests: int | None = None
        # Queue name -> (when looked at, whether tasks wait in it): see _backed_up.
        self.backlog: dict[str, tuple[float, bool]] = {}
        self.kept_redis: redis.Redis[str] | None = None  # see _redis
        # Devices heard from since the last note to Redis, and when the next note is due.
        self.heard: dict[str, float] = {}
        self.next_heard_note_at = 0.0
        self.messages_read = 0  # by _on_message: a burst goes on while each read brings one
        self.received_counters = {
            prefix: metrics.MQTT_MESSAGES_RECEIVED.labels(prefix=prefix)
            for prefix in [*ALLOWED_TOPIC_PREFIXES, "other"]
        }
        # Messages read since the counters above were last added to, by topic prefix: a
        # counter's increment (a lock and a write to its metrics file) cost more than a tenth
        # of the subscriber's own work a message; added once per turn, in flush.
        self.received_uncounted: dict[str, int] = {}
        self.client = self._make_client()

    def _make_client(self) -> AppClient:
        client = app_client(self.config.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        return client

    def _adopt(self, member: str) -> Subscriber:
        return Subscriber(replace(self.config, client_id=member), self.intake, adopted=True)

    # --- paho callbacks (called from _network() in this thread) ---------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.ended = str(reason_code)
            log.error(
                "MQTT broker refused the connection",
                reason=str(reason_code),
                host=self.config.host,
                port=self.config.port,
                hint="check MQTT_USERNAME / MQTT_PASSWORD and the broker's ACL",
            )
            return
        self.connection += 1
        self.connected_since = time.time()
        self.connect_backoff.reset()
        if self.adopted:
            # Nothing new is assigned to the session from its UNSUBACK on; what it holds still
            # arrives. Without a session (expired, ended already), the broker made an empty one.
            log.info(
                "adopted session connected",
                member=self.config.client_id,
                session_present=flags.session_present,
            )
            client.unsubscribe(sorted(self.config.every_filter()))
            return
        log.info(
            "Connected to MQTT Broker",
            host=self.config.host,
            port=self.config.port,
            client_id=self.config.client_id,
            session_present=flags.session_present,
        )
        stale = self.config.stale_filters()
        if flags.session_present and stale:
            # What the session has queued for them still arrives, and is processed alike.
            client.unsubscribe(stale)
        client.subscribe(self.config.subscriptions())
        self._report()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        """The broker's SUBACK: from here on, device messages reach this subscriber."""
        filters = [topic for topic, _options in self.config.subscriptions()]
        refused = [
            f"{topic}: {code}"
            for topic, code in zip(filters, reason_codes, strict=False)
            if code.is_failure
        ]
        if refused:
            log.error(
                "MQTT broker refused subscriptions; their messages will not arrive",
                refused=refused,
                hint="the application account (MQTT_USERNAME) must be allowed to read every "
                "ingest prefix; rewrite the ACL with manage.py sync_mqtt_credentials",
            )
            return
        log.info("Subscribed to device topics", filters=filters)

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.released_at = time.time()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self.adopted:  # over: taken back by its member, or lost; it connects once
            self.ended = self.ended or str(reason_code)
            return
        if self.paused or self.shedding:
            log.info("Left the MQTT broker; the session keeps QoS 1 messages meanwhile")
        elif not self.stopping:
            log.warning("Disconnected from MQTT Broker; reconnecting", reason=str(reason_code))
        self._report()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = time.time()
        self.last_message_at = received_at
        self.messages_read += 1
        delivery = Delivery(message.mid, message.qos, self.connection)
        topic = message.topic
        if message.retain:
            # A broker that ignores retain handling replays what was processed live already.
            metrics.MQTT_MESSAGES_RETAINED_SKIPPED.inc()
            log.warning("retained MQTT message replayed by the broker; skipped", topic=topic)
            self._ack(delivery)
            return
        prefix = topic.split("/", 1)[0] + "/"
        uncounted = self.received_uncounted
        uncounted[prefix] = uncounted.get(prefix, 0) + 1
        unchecked = Unchecked(topic, bytes(message.payload), received_at, delivery)
        try:
            self._admit(unchecked)
        except DatabaseError:
            # The registry cannot be read just now: that says nothing about the message. Keep
            # it unacknowledged and decide again at the next flush.
            self.recheck.append(unchecked)
        self.held_messages += 1
        self.held_bytes += len(unchecked.payload)
        # Only while hand-offs fail: a healthy subscriber can read more than the bound at once
        # (the broker redelivering its whole window after a rejoin, a QoS 0 burst), and the
        # flush at the end of this turn hands it on. Leaving then would make the broker send the
        # same burst again at each rejoin.
        if self.hand_off_failing and (
            self.held_messages >= self.config.hold_max_messages
            or self.held_bytes >= self.config.hold_max_bytes
        ):
            self._shed()

    def _admit(self, unchecked: Unchecked) -> None:
        """Validate one message and add it to its kind's pending task or to the rejections."""
        topic, payload, received_at = unchecked.topic, unchecked.payload, unchecked.received_at
        try:
            outcome = self.intake.check(topic, payload, received_at)
        except DatabaseError:
            raise
        except Exception as exc:
            # Nothing a device sends may stop the loop; keep the message for inspection.
            log.exception("intake failed on a message", topic=topic)
            outcome = Rejection(
                Reason.INTERNAL, f"{type(exc).__name__}: {exc}", topic, payload, received_at
            )
        if isinstance(outcome, Rejection):
            metrics.MQTT_MESSAGES_REJECTED.labels(reason=outcome.reason.value).inc()
            log.warning(
                "MQTT message rejected",
                topic=topic,
                reason=outcome.reason.value,
                detail=outcome.detail,
            )
            kept = replace(outcome, payload=payload[: DeadLetter.PAYLOAD_KEEP_BYTES])
            self.rejections.append(HeldRejection(kept, len(payload), unchecked.delivery))
            return
        pending = self.pending[outcome.kind]
        if not pending.envelopes:
            pending.opened_at = time.monotonic()
        pending.envelopes.append(outcome)
        pending.deliveries.append(unchecked.delivery)
        pending.payload_bytes += len(payload)

    def _recheck(self) -> None:
        """Messages the registry could not be asked about: ask again (raises while it is down)."""
        while self.recheck:
            self._admit(self.recheck[0])
            self.recheck.pop(0)

    # --- flushing: enqueue, then acknowledge -------------------------------------------------

    def _due(self, pending: PendingTask, kind: str, now: float, force: bool) -> bool:
        """Whether a kind's pending task goes now: after MQTT_BATCH_INTERVAL_MS, or at
        MQTT_BATCH_SIZE messages unless its queue is backed up. Then the workers are behind,
        the messages would only wait in the queue, and one larger batch costs a worker far less
        than several small ones (docs/performance.md): a full batch keeps gathering, up to
        MQTT_BATCH_MAX_SIZE messages or BACKLOG_MAX_WAIT_SECONDS, and never beyond what the
        broker's window (MQTT_RECEIVE_MAXIMUM unacknowledged) lets in."""
        if not pending.envelopes:
            return False
        size, waited = len(pending.envelopes), now - pending.opened_at
        if force or KINDS_BY_NAME[kind].immediate:
            return True
        if self.held_messages >= self.config.receive_maximum * 3 // 4:
            return True  # the broker would soon stop sending until we acknowledge
        if size < self.config.batch_size:
            # Due by age, not even full: the messages come slower than a batch fills, so there
            # is nothing to gain from holding them (and no round trip spent asking).
            return waited >= self.config.batch_interval
        # Full; held back only while its queue is backed up, and only so long.
        if size >= self.config.batch_max_size:
            return True
        if waited >= max(BACKLOG_MAX_WAIT_SECONDS, self.config.batch_interval):
            return True
        return not self._backed_up(TASK_QUEUES[KINDS_BY_NAME[kind].task].name, now)

    def _backed_up(self, queue: str, now: float) -> bool:
        """Whether tasks wait in `queue` beyond what its workers have taken: one round trip, when
        a batch is full, again after a hand-off to a queue that was not behind, else at most
        once per batch interval. Unknown (Redis down) counts as not: batches then go as they
        would without this, and the hand-off reports the outage."""
        if self.config.batch_max_size <= self.config.batch_size:
            return False
        checked = self.backlog.get(queue)
        if checked is None or now - checked[0] >= self.config.batch_interval:
            try:
                with self._redis().pipeline(transaction=False) as pipe:
                    for key in broker_list_keys(queue):
                        pipe.llen(key)
                    waiting = sum(int(length) for length in pipe.execute())
            except redis.RedisError:
                self.kept_redis = None
                waiting = 0
            checked = (now, waiting > 0)
            self.backlog[queue] = checked
        return checked[1]

    def flush(self, *, force: bool = False) -> bool:
        """Write dead letters and enqueue due batches; True when nothing due is left behind."""
        self._count_received()
        now = time.monotonic()
        if now < self.retry_flush_at and not force:
            return False
        try:
            if self.send_again:
                self._send_again()
            self._recheck()
            self._flush_rejections()
            for kind, pending in list(self.pending.items()):
                if self._due(pending, kind, now, force):
                    self._enqueue(kind, pending)
                    del self.pending[kind]
        except Exception as exc:
            delay = self.flush_backoff.next_delay()
            self.retry_flush_at = time.monotonic() + delay
            held = sum(len(p.envelopes) for p in self.pending.values())
            held += len(self.rejections) + len(self.recheck)
            self.send_again = bool(self.handed_off)
            if not self.hand_off_failing:
                log.error(
                    "cannot hand messages on; holding them unacknowledged so the broker keeps them",
                    error=f"{type(exc).__name__}: {exc}",
                    held=held,
                    retry_in_s=round(delay, 1),
                    hint="check that Redis (REDIS_URL) and the database (DATABASE_URL) are up",
                )
                self.hand_off_failing = True
            close_old_connections()
            return False
        if self.hand_off_failing:
            log.info("message hand-off recovered; acknowledging held messages")
            self.hand_off_failing = False
        self.flush_backoff.reset()
        self._count_held()
        return True

    def _count_received(self) -> None:
        """Add the messages read since the last turn to `mqtt_messages_received_total`."""
        other = self.received_counters["other"]
        for prefix, count in self.received_uncounted.items():
            self.received_counters.get(prefix, other).inc(count)
        self.received_uncounted.clear()

    def _count_held(self) -> None:
        self.held_messages = len(self.rejections) + len(self.recheck)
        self.held_bytes = sum(len(h.rejection.payload) for h in self.rejections)
        self.held_bytes += sum(len(u.payload) for u in self.recheck)
        for pending in self.pending.values():
            self.held_messages += len(pending.envelopes)
            self.held_bytes += pending.payload_bytes

    def _shed(self) -> None:
        """Holding too much while nothing can be handed on: let go of it all, unacknowledged,
        and leave the broker until Redis and the database answer. The broker keeps the QoS 1
        messages in our session and delivers them again; QoS 0 ones are gone (at most once)."""
        deliveries = [u.delivery for u in self.recheck] + [h.delivery for h in self.rejections]
        deliveries += [d for pending in self.pending.values() for d in pending.deliveries]
        dropped = sum(1 for delivery in deliveries if delivery.qos == 0)
        if dropped:
            metrics.MQTT_MESSAGES_DROPPED.labels(reason="held_too_much").inc(dropped)
        log.error(
            "holding too much while messages cannot be handed on; leaving the broker until "
            "Redis and the database answer",
            held_messages=self.held_messages,
            held_bytes=self.held_bytes,
            qos0_dropped=dropped,
            hint="the broker keeps QoS 1 messages; bounds: MQTT_HOLD_MAX_MESSAGES, "
            "MQTT_HOLD_MAX_BYTES; check REDIS_URL and DATABASE_URL",
        )
        self.pending.clear()
        self.rejections.clear()
        self.recheck.clear()
        self.held_messages = self.held_bytes = 0
        self.shedding = True
        self.next_probe_at = time.monotonic() + self.probe_backoff.next_delay()
        self.client.disconnect()
        self._report()

    def _hand_off_possible(self) -> bool:
        """One cheap round trip each to Redis and the database."""
        try:
            state_redis().ping()
            close_old_connections()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception:
            return False
        return True

    def _follow_shedding(self, now: float) -> None:
        if not self.shedding or now < self.next_probe_at:
            return
        if self._hand_off_possible():
            log.info("Redis and the database answer again; rejoining the broker")
            self.shedding = False
            self.probe_backoff.reset()
            self.next_connect_at = 0.0
        else:
            self.next_probe_at = now + self.probe_backoff.next_delay()

    def _flush_rejections(self) -> None:
        dead_letters.store(
            [
                dead_letters.Letter(
                    stage=DeadLetter.Stage.INTAKE,
                    reason=held.rejection.reason.value,
                    detail=held.rejection.detail,
                    topic=held.rejection.topic,
                    payload=held.rejection.payload,
                    received_at=held.rejection.received_at,
                    payload_size=held.payload_size,
                )
                for held in self.rejections
            ]
        )
        self._ack_all([held.delivery for held in self.rejections])
        self.rejections.clear()

    def _enqueue(self, kind: str, pending: PendingTask) -> None:
        if KINDS_BY_NAME[kind].immediate:
            # Held unacknowledged until handed on, so it will be stored: the NOC need not wait.
            announce_critical(pending.envelopes)
        task = KINDS_BY_NAME[kind].task
        queue = enqueue(task, pending.envelopes).name
        if not self.backlog.get(queue, (0.0, True))[1]:
            del self.backlog[queue]  # it was not behind; with one more task it may be: look again
        self._remember(HandedOff(task, pending.envelopes))
        self._record_received(pending.envelopes)
        metrics.MQTT_MESSAGES_ENQUEUED.labels(queue=queue).inc(len(pending.envelopes))
        metrics.MQTT_BATCH_SIZE.labels(queue=queue).observe(len(pending.envelopes))
        self._ack_all(pending.deliveries)

    def _remember(self, handed: HandedOff) -> None:
        self.handed_off.append(handed)
        self.handed_off_messages += len(handed.envelopes)
        while self.handed_off_messages > self.config.hold_max_messages:
            self.handed_off_messages -= len(self.handed_off.popleft().envelopes)
        if self.adopter is None:
            return  # only an adopter reads the record in Redis (apps/mqtt/adoption.py)
        try:
            intake_status.record_hand_off(  # each envelope written as its to_message()
                self._redis(),
                self.config.client_id,
                handed.task,
                handed.envelopes,
                len(self.handed_off),
            )
        except redis.RedisError as exc:  # handed on all the same; only the record is missing
            self.kept_redis = None
            log.warning("could not record a hand-off in Redis", error=str(exc))

    def _send_again(self) -> None:
        """Hand on again the messages last handed on. Redis acknowledged them, but a worker
        takes a task with BRPOP and records it as unacknowledged afterwards: a task taken as
        Redis died or its connection broke exists nowhere (kombu's Redis transport); and a
        Redis that crashes with `appendfsync everysec` forgets up to a second of writes. Taken
        tasks are the oldest queued ones, so this covers a backlog of up to hold_max_messages."""
        messages = self.handed_off_messages
        while self.handed_off:
            handed = self.handed_off[0]
            enqueue(handed.task, handed.envelopes)  # raises while Redis is still away
            self.handed_off.popleft()
            self.handed_off_messages -= len(handed.envelopes)
        self.send_again = False
        # This restart or request is dealt with: the next report learns the new id and count.
        self.redis_run_id = self.send_again_requests = None
        metrics.MQTT_MESSAGES_SENT_AGAIN.inc(messages)
        log.warning(
            "Redis failed or restarted, or a dead worker's tasks were put back: "
            "the messages handed on last were sent again",
            messages=messages,
            hint="repeats are absorbed by their idempotency keys (bus_messages_duplicate_total)",
        )

    def _follow_redis_restarts(self, client: Any) -> None:
        """Send again after a Redis restart, or when the tasks of a dead worker were put back
        (intake_status.SEND_AGAIN_KEY: one it had taken but not recorded is in no queue)."""
        run_id = str(client.info("server")["run_id"])
        requests = intake_status.send_again_requests(client)
        if self.handed_off and (
            (self.redis_run_id is not None and run_id != self.redis_run_id)
            or (self.send_again_requests is not None and requests != self.send_again_requests)
        ):
            self.send_again = True
        self.redis_run_id, self.send_again_requests = run_id, requests

    def _redis(self) -> redis.Redis[str]:
        """One client kept for the round trips made per batch (a new one would connect and
        authenticate each time); dropped after an error, so the next call connects afresh."""
        if self.kept_redis is None:
            self.kept_redis = state_redis()
        return self.kept_redis

    def _record_received(self, envelopes: list[Envelope], *, now: bool = False) -> None:
        """For offline detection: these devices spoke, even if their messages wait in a queue.
        Noted in Redis at most every HEARD_NOTE_SECONDS (or `now`): offline takes far longer
        to decide (DEVICE_OFFLINE_AFTER), and a note per batch cost a round trip per batch."""
        heard = self.heard
        for envelope in envelopes:
            if envelope.received_at > heard.get(envelope.source_id, 0.0):
                heard[envelope.source_id] = envelope.received_at
        if not heard or (time.monotonic() < self.next_heard_note_at and not now):
            return
        try:
            intake_status.record_received(self._redis(), heard)
        except redis.RedisError as exc:  # the messages are queued; only this note is missing
            self.kept_redis = None
            log.warning("could not record when devices were last heard", error=str(exc))
            return
        self.heard = {}
        self.next_heard_note_at = time.monotonic() + HEARD_NOTE_SECONDS

    def _ack(self, delivery: Delivery) -> None:
        self._ack_all([delivery])

    def _ack_all(self, deliveries: list[Delivery]) -> None:
        """Acknowledge the messages of `deliveries`, those at QoS 1 in one write (after any at
        QoS 2, which the subscriptions never ask for). An ack on a later connection could
        acknowledge a different message with the same packet id: the broker redelivers those
        instead, and the idempotency key absorbs it."""
        at_qos1: list[int] = []
        for delivery in deliveries:
            if delivery.connection != self.connection or delivery.qos == 0:
                continue
            if delivery.qos == 1:
                at_qos1.append(delivery.mid)
            else:
                self.client.ack(delivery.mid, delivery.qos)
        self.client.ack_all(at_qos1)

    # --- main loop ------------------------------------------------------------------------

    def _report(self) -> None:
        if self.adopted:
            return  # not a member: the session's own member reports, or is silent
        connected = self.client.is_connected() and not self.stopping
        metrics.MQTT_SUBSCRIBER_CONNECTED.labels(client_id=self.config.client_id).set(
            1 if connected else 0
        )
        try:
            self._follow_redis_restarts(state_redis())
            intake_status.write_status(
                state_redis(),
                self.config.client_id,
                kinds=self.config.kinds,
                connected=connected,
                last_message_at=self.last_message_at,
                paused=self.paused,
                connected_since=self.connected_since if connected else None,
            )
            if self.config.shared_group:
                intake_status.beat_member(state_redis(), self.config.members, self.config.client_id)
        except Exception as exc:  # Redis down must not stop the loop
            log.warning("could not record subscriber status in Redis", error=str(exc))

    def _connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry
        properties.ReceiveMaximum = self.config.receive_maximum
        self.connect_tried = True
        try:
            self.client.connect(
                self.config.host,
                self.config.port,
                keepalive=self.config.keepalive,
                clean_start=False,
                properties=properties,
            )
        except OSError as exc:
            if self.adopted:
                self.ended = f"cannot reach the broker: {exc}"
                return
            delay = self.connect_backoff.next_delay()
            self.next_connect_at = time.monotonic() + delay
            log.warning(
                "cannot reach the MQTT broker; retrying",
                host=self.config.host,
                port=self.config.port,
                error=str(exc),
                retry_in_s=round(delay, 1),
                hint="is the broker up? check MQTT_HOST / MQTT_PORT",
            )

    def step(self) -> None:
        """One turn of the loop: network I/O, due flushes, a periodic status report."""
        now = time.monotonic()
        if now >= self.next_pause_check_at:
            self._follow_pause_flag()
            self.next_pause_check_at = now + PAUSE_CHECK_SECONDS
        self._follow_shedding(now)
        # No socket: neither connected nor connecting (paho closes it when a connection drops).
        away = self.paused or self.shedding
        if self.client.socket() is None and now >= self.next_connect_at and not away:
            if self.adopted and self.connect_tried:
                self.ended = self.ended or "connection lost"  # an adopted session connects once
            else:
                self._connect()
        if self.client.socket() is not None:
            rc = self._network(self._loop_timeout())
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                self.next_connect_at = now + self.connect_backoff.next_delay()
        else:
            time.sleep(0.05)
        self.flush()
        if now >= self.next_report_at:
            self._report()
            self.next_report_at = now + intake_status.HEARTBEAT_INTERVAL_SECONDS
        if self.adopter is not None and not (self.stopping or away):
            self.adopter.step()  # not while intake is paused or shedding: it would read on

    def _network(self, timeout: float) -> MQTTErrorCode:
        """paho's `loop()` through its API for an outside loop (socket, loop_read, loop_write,
        loop_misc), reading a burst of messages per wait rather than one: up to
        READ_BURST_MESSAGES, while the socket holds whole messages and none is immediate. And no
        socket pair: `loop()` makes one, then writes a byte to it for every packet queued (every
        acknowledgement) to wake a select that this single thread is never blocked in."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        pending = getattr(sock, "pending", None)  # TLS: bytes decrypted already, unseen by select
        decrypted = pending() if pending is not None else 0
        try:
            readable, writable, _ = select.select(
                [sock], [sock] if client.want_write() else [], [], 0.0 if decrypted else timeout
            )
        except (OSError, TypeError, ValueError):
            readable, writable = [sock], []  # a closed socket: loop_read reports the loss
        if readable or decrypted:
            for _ in range(READ_BURST_MESSAGES):
                read_before = self.messages_read
                rc = client.loop_read()
                if rc or client.socket() is None:
                    return rc
                if self.messages_read == read_before or self._burst_over():
                    break  # nothing more to read yet (or not a message), or a batch to look at
                if self.shedding or self.paused or self.stopping:
                    break  # holding too much, or leaving: read no more than this
        if writable:
            rc = client.loop_write()
            if rc or client.socket() is None:
                return rc
        return client.loop_misc()

    def _burst_over(self) -> bool:
        """Whether what was read must be looked at before reading more: an alert to send, or a
        batch at its size (MQTT_BATCH_SIZE; MQTT_BATCH_MAX_SIZE while its queue is known to be
        backed up). Reading on would grow it past what `_due` allows."""
        for kind, pending in self.pending.items():
            spec = KINDS_BY_NAME[kind]
            size = len(pending.envelopes)
            if spec.immediate or size >= self.config.batch_max_size:
                return True
            if size >= self.config.batch_size:
                backed_up = self.backlog.get(TASK_QUEUES[spec.task].name, (0.0, False))[1]
                if not backed_up:
                    return True
        return False

    def _loop_timeout(self) -> float:
        """How long to wait for the broker: briefly while holding messages (their batches fall
        due), longer when holding none. A message arriving ends the wait either way, so this
        only saves the wake-ups of an idle subscriber (the urgent lane's, nearly always)."""
        if self.adopted:
            return 0.0  # stepped within its adopter's loop, whose own wait serves both
        adopting = self.adopter is not None and self.adopter.current is not None
        holding = self.pending or self.rejections or self.recheck or self.send_again or adopting
        return min(0.01, self.config.batch_interval) if holding else IDLE_LOOP_SECONDS

    def _follow_pause_flag(self) -> None:
        """`manage.py drain` pauses intake: hand on what we hold, then leave the broker."""
        try:
            paused = intake_status.intake_paused(state_redis())
        except Exception:  # Redis down: keep doing what we did; flush() reports the outage
            return
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            log.warning(
                "intake paused by an operator (manage.py drain); new messages wait in the broker",
                hint="resume with manage.py drain --resume",
            )
            self._leave_broker()
        else:
            log.info("intake resumed")
            self.next_connect_at = 0.0
        self._report()

    def run(self) -> None:
        log.info(
            "MQTT subscriber starting",
            lane=self.config.lane.value,
            kinds=self.config.kinds,
            host=self.config.host,
            port=self.config.port,
            client_id=self.config.client_id,
            batch_size=self.config.batch_size,
            batch_max_size=self.config.batch_max_size,
            batch_interval_ms=int(self.config.batch_interval * 1000),
        )
        try:
            while not self.stopping:
                self.step()
        finally:
            self._shutdown()

    def drained(self) -> bool:
        """An adopted session is drained: unsubscribed, then nothing arrived for
        ADOPT_QUIET_SECONDS, and everything received was handed on and acknowledged."""
        if self.released_at is None or self.ended is not None:
            return False
        quiet_since = max(self.released_at, self.last_message_at or 0.0)
        if time.time() - quiet_since < ADOPT_QUIET_SECONDS:
            return False
        return self.flush(force=True) and not self.held_messages

    def end_session(self) -> None:
        """Disconnect with a session expiry of 0: the broker deletes the (drained) session."""
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        self._leave_broker(properties)

    def leave(self) -> None:
        """Disconnect, keeping the session (and what it holds unacknowledged) for later."""
        self._leave_broker()

    def _leave_broker(self, properties: Properties | None = None) -> None:
        """Hand on what we hold and acknowledge it, then disconnect; the session stays, unless
        `properties` end it."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.flush(force=True):
            self._network(0.1)
        for _ in range(20):  # let the acknowledgements reach the broker; read nothing new
            sock = self.client.socket()
            if sock is None or not self.client.want_write():
                break
            with contextlib.suppress(OSError, ValueError):
                select.select([], [sock], [], 0.05)
            if self.client.loop_write():
                break
        self.client.disconnect(properties=properties)

    def _shutdown(self) -> None:
        if self.adopter is not None:
            self.adopter.stop()
        self._leave_broker()
        self._count_received()
        self._record_received([], now=True)
        try:
            intake_status.clear_status(state_redis(), self.config.client_id)
        except Exception as exc:  # the key expires by itself
            log.warning("could not clear subscriber status", error=str(exc))
        metrics.MQTT_SUBSCRIBER_CONNECTED.labels(client_id=self.config.client_id).set(0)
        log.info("MQTT subscriber stopped")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("MQTT subscriber stopping", signal=signal.Signals(signum).name)
        self.stopping = True


def main(lane: Lane = Lane.ALL) -> None:
    structlog.contextvars.bind_contextvars(lane=lane.value)  # on every line it logs
    if lane is Lane.ROUTINE:
        os.nice(ROUTINE_NICE)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    subscriber = Subscriber(SubscriberConfig.from_settings(lane))
    signal.signal(signal.SIGTERM, subscriber.request_stop)
    signal.signal(signal.SIGINT, subscriber.request_stop)
    subscriber.run()
