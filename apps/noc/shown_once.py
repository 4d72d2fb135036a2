"""Which outbox events this Daphne process has shown, so a resent one is shown once.

The outbox (apps/core/outbox.py) may send an event again when its first sending's outcome was
unknown, with the same id (`<PendingBroadcast row id>:<index>`). Each tenant's events reach a
process once, through its feed (feeds.py), so the process decides for all its clients: the
first sending of an id is shown, any later one dropped. A client that was not connected at
the first sending is not wronged: it connected after that event's effect committed, and its
snapshot shows it.

Ids are kept as 8-byte integers in sorted arrays, one per BUCKET_SECONDS, and forgotten after
`keep_seconds` (a resend comes BROADCAST_RESEND_AFTER_SECONDS after the first sending, at the
next run of beat's resend_broadcasts): a few hundred events a second cost a few MB, however
many clients are connected.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable

BUCKET_SECONDS = 10.0
INDEX_BITS = 24  # events per PendingBroadcast row: far fewer than 2**24


def _key(event_id: str) -> int | None:
    row, _, index = event_id.partition(":")
    if not (row.isdigit() and index.isdigit()) or int(index) >= 1 << INDEX_BITS:
        return None
    return int(row) << INDEX_BITS | int(index)


class ShownOnce:
    def __init__(self, keep_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_seconds = keep_seconds
        self.clock = clock
        self.started = clock()
        self.current: set[int] = set()  # the ids of this bucket
        self.sealed: deque[tuple[float, array[int]]] = deque()  # (bucket start, sorted ids)

    def first_time(self, event_id: str) -> bool:
        """True the first time `event_id` comes (an id not from the outbox: always)."""
        key = _key(event_id)
        if key is None:
            return True
        self._expire(self.clock())
        if self._seen(key):
            return False
        self.current.add(key)
        return True

    def __len__(self) -> int:
        return len(self.current) + sum(len(ids) for _, ids in self.sealed)

    def _seen(self, key: int) -> bool:
        if key in self.current:
            return True
        for _, ids in self.sealed:
            at = bisect_left(ids, key)
            if at < len(ids) and ids[at] == key:
                return True
        return False

    def _expire(self, now: float) -> None:
        if now - self.started < BUCKET_SECONDS:
            return
        if self.current:
            self.sealed.append((self.started, array("q", sorted(self.current))))
            self.current = set()
        self.started = now
        while self.sealed and self.sealed[0][0] < now - self.keep_seconds:
            self.sealed.popleft()
