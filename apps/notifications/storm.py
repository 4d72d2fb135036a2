"""Storm control: at most NOTIFICATION_MAX_PER_WINDOW notifications per recipient per window.

A recipient's window opens with its first notification and lasts NOTIFICATION_WINDOW_SECONDS.
Within it the first N notifications go out at once; the rest are folded into the recipient's
digest, sent once the window has ended (beat's `flush_notification_digests`). Keys (Redis DB 0)
name a recipient by a hash of its tenant, channel and address, never by the address itself:

    notifications:window:<hash>   notifications sent or folded in the current window (TTL)
    notifications:digest:<hash>   the folded ones, a list of JSON entries
    notifications:digests_due     sorted set: <hash> scored by when its window ends
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from django.conf import settings

from apps.core.redis_client import state_redis

PREFIX = "notifications:"
DUE_KEY = PREFIX + "digests_due"


def recipient_key(tenant_id: int, channel: str, recipient: str) -> str:
    return hashlib.sha256(f"{tenant_id}\n{channel}\n{recipient}".encode()).hexdigest()[:24]


def admit(key: str, count: int) -> int:
    """Count `count` notifications to this recipient; how many of them may go out now."""
    window_key = PREFIX + "window:" + key
    pipe = state_redis().pipeline()
    pipe.set(window_key, 0, ex=settings.NOTIFICATION_WINDOW_SECONDS, nx=True)
    pipe.incrby(window_key, count)
    _, total = pipe.execute()
    before = int(total) - count
    return max(0, min(count, settings.NOTIFICATION_MAX_PER_WINDOW - before))


def fold(key: str, entries: list[dict[str, Any]]) -> None:
    """Keep these for the recipient's digest, due when its current window ends."""
    if not entries:
        return
    client = state_redis()
    remaining_ms = client.pttl(PREFIX + "window:" + key)
    due = time.time() + max(int(remaining_ms), 0) / 1000
    pipe = client.pipeline()
    pipe.rpush(PREFIX + "digest:" + key, *[json.dumps(entry) for entry in entries])
    pipe.zadd(DUE_KEY, {key: due}, nx=True)
    pipe.execute()


def take_due_digests(now: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Remove and return the folded entries of every recipient whose window has ended."""
    client = state_redis()
    due = client.zrangebyscore(DUE_KEY, "-inf", now if now is not None else time.time())
    taken: dict[str, list[dict[str, Any]]] = {}
    for key in due:
        pipe = client.pipeline()  # MULTI: an entry folded meanwhile is in this digest or the next
        pipe.lrange(PREFIX + "digest:" + key, 0, -1)
        pipe.delete(PREFIX + "digest:" + key)
        pipe.zrem(DUE_KEY, key)
        raw, _, _ = pipe.execute()
        if raw:
            taken[key] = [json.loads(item) for item in raw]
    return taken
