"""Intake fuzzed: 100,000 generated (topic, payload) pairs, and a sample through the real bus.

`Intake.check` (apps/mqtt/intake.py) is the one function that decides what the subscriber hands
to Celery: an `Envelope` (batched and enqueued, Subscriber._admit → core/tasks/base.py
`enqueue`) or a `Rejection` (dead-lettered with its reason and counted). The bulk drives it
directly, with one long-lived instance as the subscriber keeps, and the real device registry; a
few hundred of the same inputs then go through Mosquitto, the subscriber, Redis and the workers,
to show that the real path decides the same way. The inputs are made in intake_inputs.py.

The figures (inputs, duration, memory) are printed: run with `-s` to see them.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import pytest
from django.db import transaction

from apps.core import task_json
from apps.core.envelope import Envelope
from apps.core.models import DeadLetter, ProcessedMessage
from apps.core.tasks import ledger
from apps.mqtt.consumers.base import with_devices
from apps.mqtt.intake import Intake, Reason, Rejection
from apps.mqtt.subscriber import ALLOWED_TOPIC_PREFIXES
from apps.mqtt.topics import KINDS_BY_NAME
from tests import environment
from tests.security.intake_inputs import for_each_input, register_devices
from tests.services import Service, metric, mqtt_publish, wait_for

FUZZ_INPUTS = 100_000
BASES = 500  # hypothesis examples, each expanded into FUZZ_INPUTS / BASES inputs
REAL_PATH_BASES, REAL_PATH_VARIANTS = 60, 5  # 300 inputs through the real bus
# The process's growth over the run, parsing included (payloads go up to 1 MiB, and hypothesis
# keeps its own bookkeeping).
RSS_GROWTH_BOUND = 256 * 2**20
# What intake holds after the run: its caches are bounded, so ever new device ids (a tenth of
# the inputs) cost no more than the same few.
INTAKE_HELD_BOUND = 256 * 2**10
KEY_MAX_LENGTH = ProcessedMessage._meta.get_field("key").max_length
ENVELOPE_FIELDS = list(Envelope.__struct_fields__)
CONSUMER_SAMPLE = 400  # accepted inputs per kind applied by the kind's real consumer afterwards


# --- Properties ---------------------------------------------------------------------------------


@dataclass
class Tally:
    inputs: int = 0
    accepted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    sample: dict[str, list[Envelope]] = field(default_factory=dict)  # for the consumers, by kind


def check_one(intake: Intake, topic: str, payload: bytes, tally: Tally) -> Envelope | Rejection:
    """The properties of one decision; any exception is a crash and fails the test."""
    tally.inputs += 1
    try:
        outcome = intake.check(topic, payload)
    except Exception as exc:
        raise AssertionError(f"intake crashed on {topic[:200]!r}, {payload[:300]!r}") from exc
    if isinstance(outcome, Rejection):
        assert isinstance(outcome.reason, Reason), outcome
        assert outcome.reason is not Reason.INTERNAL, outcome
        assert outcome.detail.strip(), f"rejection without a reason: {outcome!r:.600}"
        # One printable line: a database stores it, and a log line cannot be forged with it.
        assert outcome.detail.isprintable(), f"unprintable detail: {outcome!r:.600}"
        assert (outcome.topic, outcome.payload) == (topic, payload)
        tally.reasons[outcome.reason.value] += 1
        return outcome
    assert isinstance(outcome, Envelope), outcome
    tally.accepted += 1
    try:
        assert_consumable(outcome, topic)
    except Exception as exc:  # a failed assertion, or what a serializer or schema raised
        raise AssertionError(f"accepted {topic[:200]!r}, {payload[:300]!r}: {exc}") from exc
    kept = tally.sample.setdefault(outcome.kind, [])
    if len(kept) < CONSUMER_SAMPLE:
        kept.append(outcome)
    return outcome


def assert_consumable(envelope: Envelope, topic: str) -> None:
    """What Celery is handed is valid: it survives the task serializer unchanged, holds nothing
    a strict JSON reader or a database refuses, re-validates against its kind's schema to the
    same values, and its idempotency key fits the ledger."""
    assert envelope.topic == topic
    message = {name: getattr(envelope, name) for name in ENVELOPE_FIELDS}
    # Nothing a strict JSON reader refuses (NaN), nor a database (NUL, a lone surrogate).
    strict = json.dumps(message, allow_nan=False, ensure_ascii=False)
    strict.encode("utf-8")
    assert "\\u0000" not in strict, strict
    # What enqueue() writes (the envelope itself, by the task codec), read back as a worker does.
    assert task_json.loads(task_json.dumps([envelope])) == [message]
    again = KINDS_BY_NAME[envelope.kind].schema.model_validate(message["payload"])
    assert again.model_dump(mode="json") == message["payload"], strict
    assert len(envelope.key) <= KEY_MAX_LENGTH, envelope.key


def apply_with_consumers(sample: dict[str, list[Envelope]]) -> int:
    """Apply accepted messages with each kind's real consumer, in a transaction rolled back:
    an accepted message is one the consumer can process. Returns how many were applied."""
    applied = 0
    for kind, envelopes in sample.items():
        for start in range(0, len(envelopes), 200):
            batch = envelopes[start : start + 200]
            try:
                applied += apply_batch(kind, batch)
            except Exception:
                for envelope in batch:  # name the one the consumer cannot process
                    try:
                        apply_batch(kind, [envelope])
                    except Exception as exc:
                        raise AssertionError(f"{kind} consumer fails on {envelope}") from exc
                raise
    return applied


def apply_batch(kind: str, batch: list[Envelope]) -> int:
    """As the batch runner does: validate, then claim the keys (a repeat is a duplicate) and
    apply in one transaction."""
    spec = KINDS_BY_NAME[kind]
    apply = with_devices(spec.consumer, schema=spec.schema)(batch)
    with transaction.atomic():
        outcome = apply(fresh := ledger.claim(kind, batch))
        transaction.set_rollback(True)
    assert not outcome.refused, outcome.refused[:3]
    return len(fresh)


def fuzz(intake: Intake, bases_count: int, tally: Tally) -> int:
    """Run the inputs through `intake`; the largest resident size seen, sampled as it goes."""
    process = psutil.Process()
    peak = process.memory_info().rss

    def use(topic: str, payload: bytes) -> None:
        nonlocal peak
        check_one(intake, topic, payload, tally)
        if tally.inputs % 100 == 0:
            peak = max(peak, process.memory_info().rss)

    for_each_input(bases_count, FUZZ_INPUTS // BASES, use)
    return peak


def held_by(root: object) -> int:
    """Bytes of every object reachable from `root` (classes, modules and functions aside)."""
    seen: set[int] = set()
    pending, size = [root], 0
    while pending:
        item = pending.pop()
        if id(item) in seen or isinstance(item, type | type(gc) | Callable):
            continue
        seen.add(id(item))
        size += sys.getsizeof(item)
        pending.extend(gc.get_referents(item))
    return size


# --- Tests -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_100000_generated_messages_each_enqueue_a_valid_envelope_or_a_stated_rejection(
    record_property: Callable[[str, object], None],
) -> None:
    register_devices()
    intake = Intake()  # one for the whole run, as the subscriber keeps one
    tally = Tally()
    fuzz(intake, 2, Tally())  # imports and first queries before memory is counted
    rss_before = psutil.Process().memory_info().rss
    started = time.monotonic()
    rss_peak = fuzz(intake, BASES, tally)
    elapsed = time.monotonic() - started
    held = held_by(intake)
    applied = apply_with_consumers(tally.sample)

    growth_mib = (rss_peak - rss_before) / 2**20
    print(
        f"\nintake fuzz: {tally.inputs} inputs in {elapsed:.1f} s; {tally.accepted} accepted "
        f"({applied} of them then applied by the real consumers); rejected by reason: "
        f"{dict(tally.reasons.most_common())}; resident memory +{growth_mib:.0f} MiB at most; "
        f"intake holds {held / 2**10:.0f} KiB after the run"
    )
    for name, value in (
        ("inputs", tally.inputs),
        ("seconds", round(elapsed, 1)),
        ("accepted", tally.accepted),
        ("rss_growth_mib", round(growth_mib)),
    ):
        record_property(f"intake_fuzz_{name}", value)
    assert tally.inputs >= FUZZ_INPUTS
    # Every decision was reached, the acceptance included, not only the first guards.
    assert tally.accepted >= FUZZ_INPUTS // 20, tally.accepted
    assert set(tally.reasons) >= {reason.value for reason in Reason} - {"internal_error"}
    assert rss_peak - rss_before < RSS_GROWTH_BOUND
    assert held < INTAKE_HELD_BOUND


def publishable(topic: str) -> bool:
    """Whether the broker takes a PUBLISH to this topic name at all: MQTT wants UTF-8 without
    NUL or wildcards; Mosquitto also refuses control and non-characters, and $-topics are its."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return (
        0 < size <= 65535
        and not topic.startswith("$")
        and not any(c in "+#" or not c.isprintable() for c in topic)
    )


def subscribed(topic: str) -> bool:
    """Whether the subscriber's filters (`<prefix>#`, one per topic kind) match the topic."""
    return any(
        topic.startswith(prefix) or topic == prefix[:-1] for prefix in ALLOWED_TOPIC_PREFIXES
    )


def test_a_sample_through_the_real_bus_is_decided_as_intake_decides(bus: Service) -> None:
    register_devices()
    inputs: list[tuple[str, bytes]] = []
    for_each_input(REAL_PATH_BASES, REAL_PATH_VARIANTS, lambda *made: inputs.append(made))
    inputs = [(topic, payload) for topic, payload in inputs if publishable(topic)]
    # What the decision function says, now: timestamps are minutes away from any boundary.
    intake, tally = Intake(), Tally()
    keys: set[str] = set()
    for topic, payload in inputs:
        if subscribed(topic):
            outcome = check_one(intake, topic, payload, tally)
            if isinstance(outcome, Envelope):
                keys.add(outcome.key)
    before = {
        reason: metric("mqtt_messages_rejected_total", reason=reason) for reason in tally.reasons
    }

    started = time.monotonic()
    mqtt_publish(environment.MQTT_PORT, inputs)
    wait_for(
        lambda: (
            DeadLetter.objects.count() >= tally.inputs - tally.accepted
            and ProcessedMessage.objects.count() >= len(keys)
        ),
        timeout=90,
        what=f"{tally.inputs - tally.accepted} dead letters and {len(keys)} processed messages",
    )
    print(
        f"\nintake fuzz, real path: {len(inputs)} published, {tally.inputs} on the bus's topics, "
        f"{tally.accepted} accepted; all decided as intake decides, in "
        f"{time.monotonic() - started:.1f} s"
    )
    lettered = DeadLetter.objects.values_list("stage", "reason")
    assert Counter(lettered) == Counter({("intake", r): n for r, n in tally.reasons.items()})
    assert set(ProcessedMessage.objects.values_list("key", flat=True)) == keys
    for reason, count in tally.reasons.items():
        counted = metric("mqtt_messages_rejected_total", reason=reason) - before[reason]
        assert counted == count, f"{reason}: {counted} counted, {count} rejected"
    assert bus.alive()
    assert "intake failed" not in bus.log()
    assert tally.accepted, "the sample reached no acceptance"
    assert len(tally.reasons) >= 8, tally.reasons
