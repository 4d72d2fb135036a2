"""What every Celery process does for monitoring, installed once on the app (intelliwiz_config).

- Each published task carries a `published_at` header, so /metrics/export/ can tell the age of
  the oldest message waiting in a queue (Celery itself stores no send time).
- Each worker writes a heartbeat per queue it consumes, from its own event loop, so
  `celery_worker_up` costs one Redis SCAN per scrape instead of a broadcast to every worker.
- A pool child that exits folds its metric files into the archives of the multiprocess
  directory (core/metric_files.py), so replaced children leave no files behind.

The readers of what these hooks write are in bus_state.py.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import structlog
from celery import Celery, bootsteps, signals
from django.conf import settings

from apps.core.redis_client import state_redis

log = structlog.get_logger(__name__)

PUBLISHED_AT_HEADER = "published_at"
HEARTBEAT_KEY_PREFIX = "worker_heartbeat:"
HEARTBEAT_INTERVAL_SECONDS = 5
# A worker is up while its last heartbeat is younger than this; its key is kept for an hour
# after, so a dead worker shows as 0 rather than vanishing from the metrics at once.
HEARTBEAT_STALE_AFTER_SECONDS = 3 * HEARTBEAT_INTERVAL_SECONDS
HEARTBEAT_KEY_TTL_SECONDS = 3600
# What a worker writes when it stops consuming on purpose (warm shutdown, `stackctl stop`),
# followed by the time: readers tell a clean stop from a stale heartbeat (crashed or hung).
HEARTBEAT_STOPPED = "stopped:"


def heartbeat_key(queue: str, hostname: str) -> str:
    return f"{HEARTBEAT_KEY_PREFIX}{queue}:{hostname}"


class QueueHeartbeat(bootsteps.StartStopStep):
    """Consumer bootstep: while the worker consumes, refresh one heartbeat key per queue.

    It runs on the consumer's timer, so a worker whose event loop is stuck stops beating too.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, parent: Any) -> None:
        self.beat(parent)
        self.timer_entry = parent.timer.call_repeatedly(
            HEARTBEAT_INTERVAL_SECONDS, self.beat, (parent,), priority=10
        )

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
            # Stopped on purpose: down at once (an alert should still see it), not in 15 s.
            self.beat(parent, stopped=True)

    shutdown = stop

    def beat(self, consumer: Any, stopped: bool = False) -> None:
        if consumer.task_consumer is None:
            return
        queues = [queue.name for queue in consumer.task_consumer.queues]
        now = (HEARTBEAT_STOPPED if stopped else "") + repr(time.time())
        try:
            with state_redis().pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.set(heartbeat_key(queue, consumer.hostname), now)
                    pipe.expire(heartbeat_key(queue, consumer.hostname), HEARTBEAT_KEY_TTL_SECONDS)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("Could not write the worker heartbeat to Redis", error=str(exc))


def stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(PUBLISHED_AT_HEADER, time.time())


def forget_exited_child(pid: int | None = None, **_: Any) -> None:
    # Imported here: declaring the metrics reads the settings, and this module is loaded while
    # the Celery app is built, before they are.
    from apps.core import metric_files

    if pid is not None and settings.PROMETHEUS_MULTIPROC_DIR.is_dir():
        metric_files.forget_process(settings.PROMETHEUS_MULTIPROC_DIR, pid)


def forget_logged_queries(**_: Any) -> None:
    """With DEBUG on (`make run`), Django keeps the last 9,000 queries of each connection with
    their parameters; a worker answers no request, so nothing else clears them. Batches of 500
    devices make that log hundreds of megabytes per process (the 5-minute soak of
    `make bench-scale` saw the general worker grow 13 %)."""
    from django.db import reset_queries

    reset_queries()


def install(app: Celery) -> None:
    app.steps["consumer"].add(QueueHeartbeat)
    signals.before_task_publish.connect(
        stamp_publish_time, weak=False, dispatch_uid="monitoring.stamp_publish_time"
    )
    signals.worker_process_shutdown.connect(
        forget_exited_child, weak=False, dispatch_uid="monitoring.forget_exited_child"
    )
    signals.task_postrun.connect(
        forget_logged_queries, weak=False, dispatch_uid="monitoring.forget_logged_queries"
    )
