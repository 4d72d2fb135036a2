"""Redis clients by role. Each role (broker/state, cache, channel layer) has its own database."""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings


@cache
def state_redis() -> redis.Redis[str]:
    """The broker database: queues plus small shared state (subscriber status, breakers)."""
    return redis.Redis.from_url(
        settings.CELERY_BROKER_URL,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
        decode_responses=True,
    )
