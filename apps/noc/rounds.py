"""Duties a Daphne process does for all of its NOC clients at once, by one task, not one each.

A thousand clients each with their own timers (re-check access every NOC_REAUTH_SECONDS, renew
the socket's count every 30 s, flush conflated telemetry every NOC_TELEMETRY_MIN_INTERVAL_MS)
cost a task, a coroutine and a timer apiece, and a thread hop and database connection each time
they fired. A `Round` keeps its members in one dict and does its duty for all of them in one
call; `Batch` gathers the clients that have something to send and sends it on one timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

Member = TypeVar("Member")


class Round(Generic[Member]):
    """`duty(members)` every `interval()` seconds while there are members."""

    def __init__(
        self,
        name: str,
        interval: Callable[[], float],
        duty: Callable[[list[Member]], Awaitable[None]],
    ) -> None:
        self.name = name
        self.interval = interval
        self.duty = duty
        self.members: dict[Member, None] = {}  # insertion-ordered, hashed by identity
        self.task: asyncio.Task[None] | None = None

    def add(self, member: Member) -> None:
        self.members[member] = None
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    def discard(self, member: Member) -> None:
        self.members.pop(member, None)

    async def _run(self) -> None:
        while self.members:
            await asyncio.sleep(self.interval())
            members = list(self.members)
            if not members:
                break
            try:
                await self.duty(members)
            except Exception:
                log.exception("a NOC round failed; next time again", round=self.name)
        self.task = None


class Batch(Generic[Member]):
    """`flush(members)` `delay()` seconds after the first member was added since the last flush.

    Two flushes are at least `delay()` apart, so a member flushed each time is flushed at most
    that often, and one added meanwhile waits at most that long.
    """

    def __init__(
        self,
        name: str,
        delay: Callable[[], float],
        flush: Callable[[list[Member]], Awaitable[None]],
    ) -> None:
        self.name = name
        self.delay = delay
        self.flush = flush
        self.members: dict[Member, None] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.flushing: set[asyncio.Task[None]] = set()

    def add(self, member: Member) -> None:
        self.members[member] = None
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.delay(), self._due)

    def discard(self, member: Member) -> None:
        self.members.pop(member, None)

    def _due(self) -> None:
        members, self.members = list(self.members), {}
        task = asyncio.create_task(self._flush(members))
        self.flushing.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self.flushing.discard)

    async def _flush(self, members: list[Member]) -> None:
        try:
            await self.flush(members)
        except Exception:
            log.exception("a NOC batch failed", batch=self.name)
        finally:
            # The next timer starts once this flush is done: flushes never overlap.
            self.timer = None
            if self.members:
                self.timer = asyncio.get_running_loop().call_later(self.delay(), self._due)
