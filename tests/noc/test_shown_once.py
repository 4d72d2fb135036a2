"""The record of shown outbox events a Daphne process keeps for all its clients."""

from __future__ import annotations

import sys

from apps.noc.shown_once import BUCKET_SECONDS, ShownOnce


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_it_remembers_an_id_for_its_window_then_forgets_it() -> None:
    clock = Clock()
    shown = ShownOnce(keep_seconds=60, clock=clock)
    assert shown.first_time("41:0")
    clock.now += 59
    assert not shown.first_time("41:0")
    clock.now += 2 + BUCKET_SECONDS
    shown.first_time("99:0")  # any call lets it forget
    assert len(shown) == 1
    assert shown.first_time("41:0")


def test_a_hundred_thousand_ids_take_under_a_megabyte() -> None:
    """8 bytes an id once its bucket is sealed; a set of the id strings took about 150."""
    clock = Clock()
    shown = ShownOnce(keep_seconds=600, clock=clock)
    for row in range(10_000):
        for index in range(10):
            assert shown.first_time(f"{row}:{index}")
        clock.now += 0.05
    clock.now += BUCKET_SECONDS
    assert not shown.first_time("0:0")
    assert len(shown) == 100_000
    size = sum(sys.getsizeof(ids) for _, ids in shown.sealed) + sys.getsizeof(shown.current)
    assert size < 2**20
