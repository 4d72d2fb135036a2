"""One member of each NOC group per Daphne process, fanning out in process.

channels_redis brings a group message to a process once, but then through each member
channel: per message and per client a receive (two tasks, a lock, a queue) and a dispatch,
about 0.2 ms. A thousand clients on one Daphne took 0.2 s of its CPU per event, and a NOC
stream of a few dozen events a second put it minutes behind. Here the process joins each group
(a tenant's events, a user's revocations) once, with a channel of its own (`Feed`), receives
each message once, shows an outbox event once (shown_once.py), and hands it to its clients in
that group by a call.

The channel layer's contract is kept: its capacity bounds what waits for the process (drops
counted as `channel_full`), the membership is renewed before CHANNELS_GROUP_EXPIRY, and the
group is the feed's, never read from the message. When the feed cannot receive or renew,
its clients are closed (4500) to reconnect for a fresh snapshot rather than stay silently deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import structlog
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from apps.core import metrics
from apps.core.events import unbundle
from apps.noc.shown_once import ShownOnce

log = structlog.get_logger(__name__)

RENEW_FAILURES_BEFORE_CLOSING = 3


class FeedClient(Protocol):
    async def deliver(self, message: dict[str, Any]) -> None: ...

    async def feed_lost(self) -> None: ...


class Feed:
    """This process's member of one group and the clients it serves."""

    def __init__(self, layer: BaseChannelLayer, group: str) -> None:
        self.layer = layer
        self.group = group
        self.clients: set[FeedClient] = set()
        self.channel = ""
        self.joined = asyncio.ensure_future(self._join())
        self.tasks: list[asyncio.Task[None]] = []

    async def _join(self) -> None:
        # The default prefix: channels_redis reads all of a process's channels from one list.
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self.tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._renew())]

    async def _receive(self) -> None:
        try:
            while True:
                for message in unbundle(await self.layer.receive(self.channel)):
                    await self._deliver(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "NOC feed cannot receive; closing its clients so they reconnect",
                group=self.group,
                error=f"{type(exc).__name__}: {exc}",
                hint="check the channel layer (Redis DB 2)",
            )
            await self._lost()

    async def _deliver(self, message: dict[str, Any]) -> None:
        event_id = message.get("id")
        if isinstance(event_id, str) and not shown_once().first_time(event_id):
            metrics.NOC_EVENTS_DROPPED.labels(reason="duplicate").inc()
            return
        for client in list(self.clients):
            try:
                await client.deliver(message)
            except Exception:
                log.exception("a NOC client failed an event", group=self.group)

    async def _renew(self) -> None:
        """Re-join before the channel layer's group expiry, so a long session never goes deaf."""
        interval = max(1.0, settings.CHANNELS_GROUP_EXPIRY / 4)
        failures = 0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.layer.group_add(self.group, self.channel)
            except Exception as exc:
                failures += 1
                log.error("could not renew a NOC feed", group=self.group, error=str(exc))
                if failures >= RENEW_FAILURES_BEFORE_CLOSING:
                    await self._lost()
                    return
            else:
                failures = 0

    async def _lost(self) -> None:
        if _feeds.get(self.group) is self:
            del _feeds[self.group]
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await client.feed_lost()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.joined.cancel()
        if self.channel:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(self.group, self.channel)


_feeds: dict[str, Feed] = {}
_shown_once: ShownOnce | None = None


def shown_once() -> ShownOnce:
    """This process's record of the outbox events it showed."""
    global _shown_once
    if _shown_once is None:
        # Far past the resend's due time: beat's run may wait behind a busy general queue.
        _shown_once = ShownOnce(max(600, 10 * settings.BROADCAST_RESEND_AFTER_SECONDS))
    return _shown_once


async def join(group: str, client: FeedClient) -> None:
    """Deliver the group's messages to `client` from now on; returns once they flow."""
    feed = _feeds.get(group)
    if feed is None:
        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("CHANNEL_LAYERS is not configured")
        feed = _feeds[group] = Feed(layer, group)
    feed.clients.add(client)
    try:
        await asyncio.shield(feed.joined)
    except BaseException:
        await leave(group, client)
        raise


async def leave(group: str, client: FeedClient) -> None:
    feed = _feeds.get(group)
    if feed is None or client not in feed.clients:
        return
    feed.clients.discard(client)
    if not feed.clients:
        del _feeds[group]
        await feed.close()
