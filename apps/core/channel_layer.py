"""The channel layer: channels_redis's core layer, with `group_send_many` and a cheaper receive.

A telemetry batch sends one message to each of its tenants' groups (core/events.py). The
layer's `group_send` spends four Redis round trips on each (drop lapsed members, list them,
drop expired messages, add the message), about half a millisecond of a worker's CPU: with ten
tenants, a fifth of the general worker's CPU a message (docs/performance.md).
`group_send_many` does the same for several groups in two round trips per Redis host: one
pipeline lists the members of every group, one script adds every message. What each member
receives, its capacity bound (CHANNELS_CAPACITY), its expiry and the drops counted when a
channel is full are the layer's own, unchanged.

Receiving, the layer spends four round trips on each message: put back what a cancelled
receive left in the channel's backup, wait for a message (BZPOPMIN), copy it into the backup,
and drop it from the backup once handed over. A Daphne process under telemetry receives a
message per tenant per batch, each one ready: `_brpop_with_clean` takes a ready one in one
script (the first three steps, and the move into the backup atomic), so two round trips with
the backup's clean-up; it waits as before only when none is ready.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from typing import Any

from channels_redis.core import RedisChannelLayer
from redis.commands.core import AsyncScript

# Its log line is the one CountChannelLayerDrops (core/logging.py) counts for group_send.
logger = logging.getLogger("channels_redis.core")

# KEYS: a channel's Redis key per message (a Daphne process's key once per group it serves).
# ARGV: the messages, their channels' capacities, their scores, then the message expiry.
# Per key: expired messages dropped once, then each message added unless the channel is full.
# Returns the positions (from 1) of the messages dropped for that.
_SEND_MANY = """
local n = #KEYS
local expiry = tonumber(ARGV[3 * n + 1])
local expired_before = tonumber(ARGV[3 * n + 2])
local cleaned = {}
local over_capacity = {}
for i = 1, n do
    local key = KEYS[i]
    if not cleaned[key] then
        redis.call('ZREMRANGEBYSCORE', key, 0, expired_before)
        cleaned[key] = true
    end
    if redis.call('ZCOUNT', key, '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', key, ARGV[2 * n + i], ARGV[i])
        redis.call('EXPIRE', key, expiry)
    else
        over_capacity[#over_capacity + 1] = i
    end
end
return over_capacity
"""

# KEYS: the channel, its backup. The backup's messages put back (the layer's own clean-up), then
# the oldest message moved into the backup and returned; nothing when the channel is empty.
_POP_READY = """
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
local oldest = redis.call('ZPOPMIN', KEYS[1])
if oldest[1] then
    redis.call('ZADD', KEYS[2], oldest[2], oldest[1])
    return oldest[1]
end
return false
"""

# Messages added in one script share its moment; a key's messages are popped lowest score
# first, so each on the same key takes a step more, in order (the steps of a call stay far
# below the time between two calls).
_SCORE_STEP = 1e-6

_scripts: dict[str, AsyncScript] = {}  # by text, for every layer and event loop of the process


class BatchingRedisChannelLayer(RedisChannelLayer):  # type: ignore[misc]
    async def group_send_many(self, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """`group_send(group, message)` for each pair, in two round trips per Redis host.

        On one Redis host, all or nothing. With several (CHANNELS_REDIS_HOSTS), an error from
        one may come after another took its groups' messages: a caller that sends again sends
        those twice (the outbox's resends carry each event's id; the NOC shows it once)."""
        groups_of: dict[int, list[str]] = defaultdict(list)
        for group, _ in sends:
            assert self.require_valid_group_name(group), "Group name not valid"
            groups_of[self.consistent_hash(group)].append(group)
        members: dict[str, list[str]] = {}
        for index, groups in groups_of.items():
            pipe = self.connection(index).pipeline(transaction=False)
            lapsed_before = int(time.time()) - self.group_expiry
            for group in groups:
                pipe.zremrangebyscore(self._group_key(group), min=0, max=lapsed_before)
                pipe.zrange(self._group_key(group), 0, -1)
            replies = await pipe.execute()
            for group, names in zip(groups, replies[1::2], strict=True):
                members[group] = [name.decode("utf8") for name in names]

        keys: dict[int, list[str]] = defaultdict(list)
        messages: dict[int, list[bytes]] = defaultdict(list)
        capacities: dict[int, list[int]] = defaultdict(list)
        groups_at: dict[int, list[str]] = defaultdict(list)  # each message's group, for drops
        for group, message in sends:
            by_index, serialized, capacity = self._map_channel_keys_to_connection(
                members[group], message
            )
            for index, channel_keys in by_index.items():
                for key in channel_keys:
                    keys[index].append(key)
                    messages[index].append(serialized[key])
                    capacities[index].append(capacity[key])
                    groups_at[index].append(group)
        for index, channel_keys in keys.items():
            now = time.time()
            sent_on: dict[str, int] = defaultdict(int)  # messages so far on each key
            scores: list[float] = []
            for key in channel_keys:
                scores.append(now + sent_on[key] * _SCORE_STEP)
                sent_on[key] += 1
            args: list[bytes | int | float] = [*messages[index], *capacities[index], *scores]
            args += [int(self.expiry), int(now) - int(self.expiry)]
            connection = self.connection(index)
            dropped = await self._script(_SEND_MANY)(
                keys=channel_keys, args=args, client=connection
            )
            if dropped:
                self._log_drops(groups_at[index], [groups_at[index][i - 1] for i in dropped])

    @staticmethod
    def _log_drops(groups_at: list[str], dropped_groups: list[str]) -> None:
        """One line per group, as `group_send` logs it (CountChannelLayerDrops counts them)."""
        channels = Counter(groups_at)
        for group, over_capacity in sorted(Counter(dropped_groups).items()):
            logger.info(
                "%s of %s channels over capacity in group %s",
                over_capacity,
                channels[group],
                group,
            )

    async def _brpop_with_clean(self, index: int, channel: str, timeout: float) -> bytes | None:
        """The channel's oldest message, kept in its backup until `_clean_receive_backup`: at
        once in one script when one is ready, else by the layer's own blocking wait."""
        connection = self.connection(index)
        member: bytes | None = await self._script(_POP_READY)(
            keys=[channel, self._backup_channel_name(channel)], client=connection
        )
        if member is not None:
            return member
        return await super()._brpop_with_clean(index, channel, timeout)  # type: ignore[no-any-return]

    def _script(self, text: str) -> AsyncScript:
        """A script run by EVALSHA: its text crosses to Redis once, not with every call."""
        script = _scripts.get(text)
        if script is None:  # the connection only encodes the text; each call names its own
            script = _scripts[text] = AsyncScript(self.connection(0), text)
        return script
