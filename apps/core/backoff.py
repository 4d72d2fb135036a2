"""Capped exponential backoff with jitter: the one formula for every retry in the system."""

from __future__ import annotations

import random

# The jitter of a loop that retries on its own (reconnects, flushes): up to the full delay.
LOOP_JITTER = (0.5, 1.0)


def backoff_delay(
    attempt: int, *, base: float, cap: float, jitter: tuple[float, float] = LOOP_JITTER
) -> float:
    """Seconds to wait before retry number `attempt` (0 first): min(cap, base·2^attempt) times
    a random factor within `jitter`, so processes that failed together do not retry together."""
    low, high = jitter
    return float(min(cap, base * 2**attempt) * random.uniform(low, high))  # noqa: S311


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
