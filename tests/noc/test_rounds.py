"""A Daphne process's per-process duties (apps/noc/rounds.py), on a real event loop."""

from __future__ import annotations

import asyncio

from apps.noc.rounds import Batch, Round


def test_a_batch_flushes_its_members_together_and_one_added_during_a_flush_next_time():
    flushed: list[list[str]] = []

    async def scenario() -> None:
        release = asyncio.Event()

        async def flush(members: list[str]) -> None:
            flushed.append(members)
            if len(flushed) == 1:
                batch.add("late")  # arrives while the first flush is still sending
                await release.wait()

        batch: Batch[str] = Batch("test", lambda: 0.01, flush)
        for member in ("a", "b", "a"):
            batch.add(member)
        while not flushed:
            await asyncio.sleep(0.005)
        release.set()
        while len(flushed) < 2:
            await asyncio.sleep(0.005)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert flushed == [["a", "b"], ["late"]]


def test_a_round_serves_every_member_by_one_task_and_stops_once_none_is_left():
    served: list[list[int]] = []

    async def scenario() -> asyncio.Task[None] | None:
        async def duty(members: list[int]) -> None:
            served.append(members)
            round_.discard(2)

        round_: Round[int] = Round("test", lambda: 0.01, duty)
        for member in (1, 2, 3):
            round_.add(member)
        task = round_.task
        while len(served) < 2:
            await asyncio.sleep(0.005)
        assert round_.task is task  # the same one task throughout
        round_.discard(1)
        round_.discard(3)
        await asyncio.wait_for(asyncio.shield(task), 5) if task else None
        return round_.task

    assert asyncio.run(scenario()) is None
    assert served[:2] == [[1, 2, 3], [1, 3]]
