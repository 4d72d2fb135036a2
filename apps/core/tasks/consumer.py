"""The worker's broker consumer: tasks it held when Redis went away go back as soon as it returns.

On a lost broker connection Celery tries to put the worker's prefetched, unacknowledged tasks
back on their queues at once — while Redis is down, so that fails — and the tasks it is running
can no longer be acknowledged (their channel is gone). All of them would wait in Redis's unacked
hash for the visibility timeout (VISIBILITY_TIMEOUT_SECONDS, minutes) before kombu restores them.
This consumer remembers their delivery tags and, once it has connected again, puts back those
still unacknowledged, as `manage.py requeue` would. A task put back while it is still running
here runs twice; its idempotency keys make the second run change nothing.

One more case: a task taken in the instant Redis died — recorded as unacknowledged in Redis, but
the reply lost, so no worker knows it. For the idempotent processing tasks (IDEMPOTENT_TASKS) of
its own queues, the consumer also puts back those taken in the ORPHAN_WINDOW_SECONDS before it
lost the connection; if another worker did hold one, that task runs twice, with no effect.

When a worker dies outright holding tasks, a task it had taken but not recorded (below) is in no
queue and no record; whenever the tasks a dead worker held are put back (kombu's restore after
the visibility timeout here, `manage.py requeue`), subscribers are asked to hand on their last
messages again (apps/core/intake_status.py, SEND_AGAIN_KEY).

And one the fault suite found: kombu's Redis transport takes a task from its queue (BRPOP) and
records it as unacknowledged in a second round trip. When Redis dies between the two, the task
is in neither place, only in this worker's memory, and kombu drops it. RecordingQoS keeps such
a task, and the consumer puts it back on its queue once Redis answers again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from celery.worker.consumer import Consumer
from kombu.transport import redis as redis_transport

from apps.core.intake_status import request_send_again
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import IDEMPOTENT_TASKS, REDIS_SOCKET_TIMEOUT_SECONDS

log = structlog.get_logger(__name__)

# A task taken this long before the connection was found lost may be an orphan (see above).
ORPHAN_WINDOW_SECONDS = 2 * REDIS_SOCKET_TIMEOUT_SECONDS


# Tasks taken from their queue whose record as unacknowledged never reached Redis (see above).
UNRECORDED: list[Any] = []


class RecordingQoS(redis_transport.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except Exception:
            UNRECORDED.append(message)  # kombu forgets it as the error propagates
            raise

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Kombu's put-back of tasks unacknowledged past the visibility timeout: their worker
        died (or ran past it), and may have died holding a task it had taken but not recorded,
        which no put-back can find. Subscribers are asked to hand on their last messages again
        (intake_status.SEND_AGAIN_KEY)."""
        restored_before = self._restored
        super().restore_visible(*args, **kwargs)
        if self._restored != restored_before:
            log.warning(
                "tasks unacknowledged past the visibility timeout put back on their queues",
                tasks=self._restored - restored_before,
                hint="a worker died holding them; subscribers send their last messages again",
            )
            request_send_again(state_redis())

    _restored = 0  # tasks put back by restore_by_tag, counted for restore_visible

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        self._restored += 1
        super().restore_by_tag(tag, client, leftmost)


# Every Redis channel of this worker process records through it (kombu reads Channel.QoS).
redis_transport.Channel.QoS = RecordingQoS


class RecoveringConsumer(Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_at_loss: set[str] = set()
        self._lost_at: float | None = None

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        self._held_at_loss |= self._held_tags()
        self._lost_at = self._lost_at or time.time()
        super().on_connection_error_after_connected(exc)

    def connect(self) -> Any:
        connection = super().connect()
        if self._lost_at is not None:
            self._held_at_loss |= self._orphans(connection, self._lost_at)
            self._put_back(connection)
        return connection

    def _orphans(self, connection: Any, lost_at: float) -> set[str]:
        """Idempotent tasks of this worker's queues taken just before the connection was lost."""
        try:
            channel = connection.default_channel
            client = channel.client
            since = lost_at - ORPHAN_WINDOW_SECONDS
            tags = client.zrangebyscore(channel.unacked_index_key, since, lost_at)
            queues = {queue.name for queue in self.app.amqp.queues.consume_from.values()}
            found = set()
            for tag in tags:
                raw = client.hget(channel.unacked_key, tag)
                if raw is None:
                    continue
                payload, _exchange, routing_key = json.loads(raw)
                if routing_key in queues and payload["headers"].get("task") in IDEMPOTENT_TASKS:
                    found.add(tag.decode() if isinstance(tag, bytes) else str(tag))
        except Exception as exc:  # not worth failing the reconnection: the timeout still holds
            log.warning("could not look for orphaned tasks", error=f"{type(exc).__name__}: {exc}")
            return set()
        return found

    def _held_tags(self) -> set[str]:
        """Delivery tags of the tasks this worker took and has not acknowledged."""
        channel = getattr(getattr(self, "task_consumer", None), "channel", None)
        delivered = getattr(getattr(channel, "qos", None), "_delivered", None) or {}
        return {str(tag) for tag in delivered}

    def _put_back(self, connection: Any) -> None:
        channel = connection.default_channel
        while UNRECORDED:
            message = UNRECORDED[0]
            info = message.delivery_info
            # To the head of its queue, as the put-back tasks below; kombu logs a failure.
            channel._do_restore_message(
                message._raw, info["exchange"], info["routing_key"], channel.client, leftmost=True
            )
            UNRECORDED.pop(0)
            log.warning(
                "a task taken just as the broker connection was lost put back on its queue",
                task=message.headers.get("task"),
                id=message.headers.get("id"),
            )
        tags = sorted(self._held_at_loss)
        qos = channel.qos
        for done, tag in enumerate(tags):
            try:
                qos.restore_by_tag(tag, leftmost=True)  # a no-op for a tag no longer unacked
            except Exception as exc:  # the broker went again: the rest wait for the next connect
                log.warning(
                    "could not put back held tasks yet", error=f"{type(exc).__name__}: {exc}"
                )
                self._held_at_loss -= set(tags[:done])
                return
        self._held_at_loss.clear()
        self._lost_at = None
        log.warning(
            "broker connection back; tasks held when it was lost put back on their queues",
            tasks=len(tags),
            hint="a task that was running then may run twice; its effects apply once",
        )
