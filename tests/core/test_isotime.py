"""core/isotime.py writes and reads exactly what datetime's own methods do, for any value."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import AwareDatetime, TypeAdapter

from apps.core import isotime

INDIA = timezone(timedelta(hours=5, minutes=30))


def _sample(count: int) -> list[datetime]:
    """Datetimes over the whole range, a third on a whole second (no fraction written)."""
    chooser = random.Random(7)
    span = (datetime.max - datetime.min) // timedelta(microseconds=1)
    values = []
    for n in range(count):
        value = datetime.min.replace(tzinfo=UTC) + timedelta(microseconds=chooser.randrange(span))
        values.append(value.replace(microsecond=0) if n % 3 == 0 else value)
    return values


VALUES = [
    *_sample(3000),
    datetime(2026, 12, 4, 15, 27, 58, 886173, tzinfo=UTC),
    datetime(2026, 12, 4, 15, 27, 58, tzinfo=UTC),
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year under 1000: four digits all the same
]


@pytest.mark.parametrize("zone", [UTC, INDIA], ids=["utc", "india"])
def test_isoformat_is_datetimes_own(zone: timezone) -> None:
    for value in VALUES:
        if zone is not UTC and value.year in (1, 9999):
            continue  # out of range once moved
        local = value.astimezone(zone)
        assert isotime.isoformat(local) == local.isoformat()


@pytest.mark.parametrize("zone", [UTC, INDIA], ids=["utc", "india"])
def test_naive_utc_text_is_what_django_stores_on_sqlite(zone: timezone) -> None:
    for value in VALUES:
        if zone is not UTC and value.year in (1, 9999):
            continue
        local = value.astimezone(zone)
        assert isotime.naive_utc_text(local) == str(local.astimezone(UTC).replace(tzinfo=None))


def test_as_utc_is_replace_with_utc_fold_included() -> None:
    for n, value in enumerate(VALUES):
        naive = value.replace(tzinfo=None, fold=n % 2)
        made, expected = isotime.as_utc(naive), naive.replace(tzinfo=UTC)
        assert (made, made.tzinfo, made.fold) == (expected, UTC, expected.fold)


@pytest.mark.parametrize(
    "text", ["2026-12-04T15:27:58.886173Z", "2026-12-04T15:27:58+00:00", "0999-01-02T03:04:05Z"]
)
def test_a_zone_of_pydantic_s_own_is_written_as_datetime_writes_it(text: str) -> None:
    parsed = TypeAdapter(AwareDatetime).validate_python(text)
    assert parsed.tzinfo is not UTC  # pydantic's TzInfo: the general path, not the UTC one
    assert isotime.isoformat(parsed) == parsed.isoformat()
    assert isotime.naive_utc_text(parsed) == str(parsed.astimezone(UTC).replace(tzinfo=None))


def test_the_same_datetime_written_twice_gives_its_own_text_both_times() -> None:
    # A device's last_seen and last_heartbeat are one object: the second write is remembered.
    first, second = VALUES[1], VALUES[2]
    for value in (first, first, second, first, second, second):
        assert isotime.naive_utc_text(value) == str(value.replace(tzinfo=None))
