"""The idempotency ledger: a key is claimed once, whatever repeats it."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.core.envelope import Envelope
from apps.core.models import ProcessedMessage
from apps.core.tasks import ledger
from tests.services import wait_for

pytestmark = pytest.mark.django_db


def envelope(key: str, battery: float = 50.0) -> Envelope:
    return Envelope(key, "device/d-1/telemetry", "d-1", "telemetry", {"battery": battery}, 0.0)


def test_a_claimed_key_is_fresh_once_even_when_a_batch_repeats_it() -> None:
    first, repeat = envelope("k-1", 10.0), envelope("k-1", 20.0)
    before = timezone.now()
    fresh = ledger.claim("telemetry", [first, envelope("k-2"), repeat])
    assert [(e.key, e.payload) for e in fresh] == [
        ("k-1", {"battery": 10.0}),
        ("k-2", {"battery": 50.0}),
    ]
    assert [e.key for e in ledger.claim("telemetry", [envelope("k-2"), envelope("k-3")])] == ["k-3"]
    assert ledger.claim("telemetry", [envelope("k-1"), envelope("k-3")]) == []

    rows = {row.key: row for row in ProcessedMessage.objects.all()}
    assert sorted(rows) == ["k-1", "k-2", "k-3"]
    assert {row.kind for row in rows.values()} == {"telemetry"}
    for row in rows.values():  # stored as Django stores an aware datetime: read back the same
        assert before <= row.processed_at <= timezone.now() + timedelta(seconds=1)


def test_a_released_key_can_be_claimed_again() -> None:
    ledger.claim("telemetry", [envelope("k-1")])
    ledger.release("k-1")
    assert [e.key for e in ledger.claim("telemetry", [envelope("k-1")])] == ["k-1"]


def test_keys_older_than_the_retention_are_pruned_by_their_claim_time(settings) -> None:
    ledger.claim("telemetry", [envelope("old"), envelope("new")])
    ProcessedMessage.objects.filter(key="old").update(
        processed_at=timezone.now() - timedelta(days=settings.IDEMPOTENCY_RETENTION_DAYS, seconds=1)
    )
    assert ledger.prune_processed_messages() == 1
    assert list(ProcessedMessage.objects.values_list("key", flat=True)) == ["new"]


def second_waits_for_a_lock() -> bool:
    if connection.vendor != "postgresql":
        return True  # SQLite: its BEGIN IMMEDIATE waits for the first's commit, at any moment
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_key_claimed_by_an_open_transaction_is_not_claimed_again_nor_an_error() -> None:
    """Two workers holding one message (a redelivery while the first still runs): the second's
    claim waits for the first transaction and skips the key, on every database."""
    claimed_first, finish_first = threading.Event(), threading.Event()
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(name: str, keys: list[str], *, hold: bool) -> None:
        try:
            with transaction.atomic():
                results[name] = [
                    e.key for e in ledger.claim("telemetry", [envelope(k) for k in keys])
                ]
                if hold:
                    claimed_first.set()
                    finish_first.wait(30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=worker, args=("first", ["k-1"]), kwargs={"hold": True})
    first.start()
    assert claimed_first.wait(30)
    second = threading.Thread(
        target=worker, args=("second", ["k-1", "k-2"]), kwargs={"hold": False}
    )
    second.start()
    wait_for(second_waits_for_a_lock, timeout=30, what="the second claim to wait for the first")
    finish_first.set()
    first.join(30)
    second.join(30)
    assert not errors
    assert results == {"first": ["k-1"], "second": ["k-2"]}


# Keys of the form written before migration core.0004 (`<topic>#<msg_id>@<time>`), and today's.
FORMER = {
    "device/d-1/telemetry#42@20261127T100000.123456Z": (
        "20261127T100000.123456Z|device/d-1/telemetry#42"
    ),
    "alert/d-1/panic#a@b@20261127T100000.000001Z": "20261127T100000.000001Z|alert/d-1/panic#a@b",
    "device/d-1/telemetry#7@99T000000.000000Z": "99T000000.000000Z|device/d-1/telemetry#7",
}
UNCHANGED = ["sha256:" + "ab" * 32, "device/d-1/telemetry#no-time", "k-1"]


def test_the_key_migration_puts_the_time_first_keeps_digests_and_goes_back() -> None:
    from importlib import import_module
    from types import SimpleNamespace

    from django.apps import apps

    migration = import_module("apps.core.migrations.0004_idempotency_keys_time_first")
    editor = SimpleNamespace(connection=connection)  # all the migration's functions use of it
    ledger.claim("telemetry", [envelope(key) for key in [*FORMER, *UNCHANGED]])
    migration.forward(apps, editor)
    keys = set(ProcessedMessage.objects.values_list("key", flat=True))
    assert keys == {*FORMER.values(), *UNCHANGED}
    migration.backward(apps, editor)
    assert set(ProcessedMessage.objects.values_list("key", flat=True)) == {*FORMER, *UNCHANGED}


def test_a_message_claimed_in_both_forms_keeps_one_claim_after_the_key_migration() -> None:
    from importlib import import_module
    from types import SimpleNamespace

    from django.apps import apps

    migration = import_module("apps.core.migrations.0004_idempotency_keys_time_first")
    former, current = next(iter(FORMER.items()))
    odd_former, odd_current = list(FORMER.items())[-1]  # the one the statement leaves to Python
    ledger.claim("telemetry", [envelope(k) for k in (former, current, odd_former, odd_current)])
    migration.forward(apps, SimpleNamespace(connection=connection))
    assert sorted(ProcessedMessage.objects.values_list("key", flat=True)) == sorted(
        [current, odd_current]
    )


def test_an_envelope_without_a_string_key_is_refused_as_before_not_rewritten() -> None:
    message = envelope("k-1").to_message()
    with pytest.raises(TypeError):
        Envelope.from_message({k: v for k, v in message.items() if k != "key"})
    assert Envelope.from_message({**message, "key": 7}).key == 7


@pytest.mark.parametrize("message", [["k-1"], "k-1", None, 7], ids=["list", "str", "null", "int"])
def test_a_task_argument_that_is_no_object_is_refused_as_the_batch_runner_expects(
    message: object,
) -> None:
    # The batch runner dead-letters what raises TypeError or ValueError here as unreadable.
    with pytest.raises(TypeError):
        Envelope.from_message(message)  # type: ignore[arg-type]


def test_a_task_of_an_earlier_release_finds_the_claim_of_its_rewritten_key() -> None:
    # Claimed before the upgrade (then rewritten by the migration), delivered again after it in
    # a task queued by the earlier release: the same message, no second effect.
    former, current = next(iter(FORMER.items()))
    ledger.claim("telemetry", [envelope(current)])
    queued = Envelope.from_message(envelope(former).to_message())
    assert queued.key == current
    assert ledger.claim("telemetry", [queued]) == []


def key_indexes() -> dict[str, dict[str, object]]:
    table = ProcessedMessage._meta.db_table
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return {name: found for name, found in constraints.items() if found["columns"] == ["key"]}


def test_the_ledger_key_has_one_index_the_unique_one() -> None:
    """A key written per message costs one B-tree: on PostgreSQL, migration core.0005 drops
    the `_like` twin Django adds beside an indexed CharField (no LIKE query reads the keys)."""
    indexes = key_indexes()
    assert len(indexes) == 1, f"indexes on the ledger's key: {sorted(indexes)}"
    assert next(iter(indexes.values()))["unique"]


@pytest.mark.django_db(transaction=True)
def test_the_like_index_comes_back_when_its_migration_is_reversed() -> None:
    from django.core.management import call_command

    call_command("migrate", "core", "0004", verbosity=0)
    try:
        expected = 2 if connection.vendor == "postgresql" else 1  # SQLite never had the twin
        assert len(key_indexes()) == expected
    finally:
        call_command("migrate", "core", verbosity=0)
    assert len(key_indexes()) == 1
