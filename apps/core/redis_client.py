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
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
        decode_responses=True,
    )
