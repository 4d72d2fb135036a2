"""The health canary: proof that each queue is consumed, not only that its worker answers ping.

Beat sends one canary to every queue every CANARY_INTERVAL_SECONDS at top priority
(celery_settings.BEAT_SCHEDULE); the worker that runs it records the time under
`health:canary:<queue>`, read by bus_state for health and /metrics/export/.
A queue nobody consumes collects one canary per interval; a returning worker clears them in
moments. The canary records no process metric.
"""

from __future__ import annotations

import time

from celery import shared_task

from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import CANARY_TASK, canary_options

CANARY_KEY_PREFIX = "health:canary:"


def canary_key(queue: str) -> str:
    return CANARY_KEY_PREFIX + queue


@shared_task(name=CANARY_TASK, ignore_result=True)
def canary(queue: str) -> None:
    state_redis().set(canary_key(queue), repr(time.time()))


def send_canary(queue: str) -> None:
    """What beat does for each queue; the tests call it to avoid waiting for beat."""
    canary.apply_async(args=(queue,), **canary_options(queue))
