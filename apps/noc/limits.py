"""How many NOC WebSockets one user may hold, and open per minute: shared by every Daphne process.

Each connect costs a snapshot (up to 500 alerts and 2,000 devices), so a user, or whoever holds
their token, must not be able to open them without end. Kept in Redis (DB 0):

- `noc_connects:<user id>`: a sorted set of the user's connects in the last minute (sliding);
- `noc_sockets:<user id>`: a sorted set of the user's open connections (channel names), each
  scored with when its Daphne process last said it was still open. A connection not renewed for
  SOCKET_STALE_SECONDS (its process died) no longer counts.

When Redis cannot be asked, a connection is let in: operators must see their alerts.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

import redis
import structlog
from django.conf import settings

from apps.core.redis_client import state_redis

log = structlog.get_logger(__name__)

SOCKET_RENEW_SECONDS = 30
SOCKET_STALE_SECONDS = 3 * SOCKET_RENEW_SECONDS


def _sockets_key(user_id: int) -> str:
    return f"noc_sockets:{int(user_id)}"


def admit(user_id: int, channel_name: str) -> str | None:
    """Count this connect; None when it may open, else which limit it is over."""
    now = time.time()
    connects_key = f"noc_connects:{int(user_id)}"
    sockets_key = _sockets_key(user_id)
    try:
        client = state_redis()
        with client.pipeline() as pipe:
            pipe.zremrangebyscore(connects_key, 0, now - 60)
            pipe.zadd(connects_key, {f"{now}:{channel_name}": now})
            pipe.zcard(connects_key)
            pipe.expire(connects_key, 60)
            pipe.zremrangebyscore(sockets_key, 0, now - SOCKET_STALE_SECONDS)
            pipe.zcard(sockets_key)
            _, _, connects, _, _, open_now = pipe.execute()
        if int(connects) > settings.NOC_MAX_CONNECTS_PER_MINUTE:
            return "connects_per_minute"
        if int(open_now) >= settings.NOC_MAX_SOCKETS_PER_USER:
            return "sockets_per_user"
        with client.pipeline() as pipe:
            pipe.zadd(sockets_key, {channel_name: now})
            pipe.expire(sockets_key, SOCKET_STALE_SECONDS)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("NOC connection limits not checked: Redis", error=str(exc))
    return None


def renew(sockets: Iterable[tuple[int, str]]) -> None:
    """These connections (user id, channel name) are still open: every SOCKET_RENEW_SECONDS, all
    of a Daphne process's in one round trip."""
    now = time.time()
    by_user: dict[int, dict[str, float]] = defaultdict(dict)
    for user_id, channel_name in sockets:
        by_user[user_id][channel_name] = now
    try:
        with state_redis().pipeline(transaction=False) as pipe:
            for user_id, members in by_user.items():
                # xx: refresh, never re-add a socket released since this round listed it.
                pipe.zadd(_sockets_key(user_id), members, xx=True)  # type: ignore[arg-type]
                pipe.expire(_sockets_key(user_id), SOCKET_STALE_SECONDS)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("NOC connections not renewed in Redis", error=str(exc))


def release(user_id: int, channel_name: str) -> None:
    try:
        state_redis().zrem(_sockets_key(user_id), channel_name)
    except redis.RedisError as exc:  # it stops counting after SOCKET_STALE_SECONDS anyway
        log.warning("NOC connection not released in Redis", error=str(exc))
