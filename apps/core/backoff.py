"""Capped exponential backoff with jitter: the one formula for every retry in the system."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (0 first): between half and all of
    min(cap, base·2^attempt), so processes that failed together do not retry together."""
    delay = min(cap, base * 2**attempt)
    return random.uniform(delay / 2, delay)  # noqa: S311  (jitter, not cryptography)


class Backoff:
    """The same delays for a loop that counts its own attempts (reconnects, flushes)."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
