"""Generated (topic, payload) inputs for the intake fuzz (test_intake_fuzz.py).

Hypothesis draws structured base messages (`bases()`): a topic kind's payload as a device sends
it, with 0-3 fields mutated, dropped or added from its JSON strategy (wrong types, huge and
non-finite numbers, unicode, nesting) and raw tokens no encoder writes (NaN, 1e400, lone
surrogates, deep nesting). `expand()` turns each base into many inputs with a mutator seeded
from it: more field changes and timestamps, byte-level damage (truncation, invalid UTF-8, BOM,
UTF-16, binary, oversize), ids never heard before, and broken topics (bad ids, wildcards, NUL,
newlines, lengths). One hypothesis example costs 1-10 ms on a loaded two-core machine, a
mutated variant about a hundredth of that: 100,000 inputs fit in a test, as reproducible as the
derandomized hypothesis run that seeds them.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from django.conf import settings
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from apps.alerts.models import DEVICE_ALERT_TYPES, Severity
from apps.devices.commands import CommandResult
from apps.mqtt.topics import KINDS_BY_NAME, TOPIC_KINDS
from tests.factories import create_tenant_with_devices

# One registered device per topic kind, of the device kind that topic registers; and strangers.
DEVICES = {kind.name: f"fuzz-{kind.name.replace('_', '-')}" for kind in TOPIC_KINDS}
STRANGERS = ("stranger-1", "fuzz-ghost", "A", "x" * 64)

SETTINGS = hypothesis_settings(
    deadline=None,
    database=None,  # no example database: every run is the same
    derandomize=True,  # a fixed seed, so CI replays the same inputs
    suppress_health_check=list(HealthCheck),
    # No shrinking: a failure names its exact input, and shrinking would outlast the timeout.
    phases=[Phase.explicit, Phase.generate],
)


def register_devices() -> None:
    for kind in TOPIC_KINDS:
        create_tenant_with_devices(f"fuzz-{kind.name}", DEVICES[kind.name], kind=kind.registers_as)


# --- Values -----------------------------------------------------------------------------------

AWKWARD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400,
    1e308, -1e308, 5e-324, -0.0, math.nan, math.inf, -math.inf,
    "", " ", "NaN", "Infinity", "-Infinity", "1e400", "9" * 30, "x" * 5000,
    "\x00", "a\x00b", "\ud800", "\udfff x", "\u202e\u200b\ufeff",
    "ß" * 32, "ﬃ" * 30, "İ" * 32,  # 64, 90 and 64 characters once upper- or lower-cased
    [], {}, {"lat": 1, "lon": 2},
)  # fmt: skip
# Written into the payload's text as they are: what json.dumps would never write.
RAW_TOKENS: tuple[str, ...] = (
    "NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "0x10", "01", "1.", ".5", "+1",
    "1" * 5000,  # beyond Python's int digit limit
    '"\\ud800"', '"\\udc00\\ud800"', '"\\u0000"', '"a\\u0000"',
    '{"\\u0000": 1e999}', '{"\\ud800": 99999999999999999999999}',
    "[" * 50_000 + "]" * 50_000, '{"a":' * 20_000 + "1" + "}" * 20_000,  # too deep to parse
    "[" * 900 + "]" * 900,
    '"' + "é" * 20_000 + '"',
)  # fmt: skip
ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz0123456789-_.:", "àéîõüßÆØ", "漢字かなカナ한국어", "😀🚨🔥",
    "\u0301\u0308\u200d", "\x00\x01\x1f\x7f\x85", "\ud800\udbff\udc00\udfff",
    "\u200b\u202e\ufeff\ufffe\uffff", " \t\r\n", "/+#$",
)  # fmt: skip
TIMESTAMP_FORMS: tuple[Any, ...] = (
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+00:00",
    "2026-02-30T00:00:00Z", "2026-11-27T10:00:00", "2026-11-27", "now", "",
    0, -1, 2**40, 1e20,
)  # fmt: skip


@dataclass(frozen=True)
class Raw:
    """A token spliced into the payload's text where this value stands."""

    text: str


@dataclass(frozen=True)
class Ago:
    """A timestamp this many seconds before the moment the input is made (negative: ahead)."""

    seconds: int
    style: int = 0


def random_text(rng: random.Random) -> str:
    size = rng.choice((0, 1, 3, 8, 20, 33, 65, 300, 2001))
    chunk = "".join(rng.choices(rng.choice(ALPHABETS), k=min(size, 12)))
    return (chunk * (size // 12 + 1))[:size]


def random_number(rng: random.Random) -> int | float:
    form = rng.randrange(4)
    if form == 0:
        bits = rng.choice((7, 31, 63, 64, 65, 200))
        return rng.getrandbits(bits) * rng.choice((1, -1))
    if form == 1:  # any double: subnormals, huge, NaN and infinities included
        return float(struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0])
    return rng.uniform(-1000, 1000)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    form = rng.randrange(8 if depth < 2 else 5)
    if form == 0:
        return rng.choice(AWKWARD_VALUES)
    if form == 1:
        return random_number(rng)
    if form == 2:
        return random_text(rng)
    if form == 3:
        return rng.choice((None, True, False))
    if form == 4:
        return Raw(rng.choice(RAW_TOKENS))
    if form == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_timestamp(rng: random.Random) -> Any:
    form = rng.randrange(6)
    if form <= 2:
        return Ago(rng.randrange(-60, 3600), style=rng.randrange(3))
    if form == 3:
        return Ago(rng.choice((-900, -86400, 8 * 86400, 400 * 86400)))
    if form == 4:
        return rng.choice(TIMESTAMP_FORMS)
    return random_value(rng)


def iso(ago: Ago) -> str:
    at = datetime.now(tz=UTC) - timedelta(seconds=ago.seconds)
    if ago.style == 1:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if ago.style == 2:
        return at.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    return at.isoformat()


def serialize(document: dict[str, Any], ascii_only: bool) -> bytes:
    raws: list[str] = []

    def plain(value: Any) -> Any:
        if isinstance(value, Ago):
            return iso(value)
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x01RAW{len(raws) - 1}\x01"
        raise TypeError(value)

    text = json.dumps(document, ensure_ascii=ascii_only, default=plain)
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x01RAW{index}\x01", ensure_ascii=ascii_only), raw)
    # Lone surrogates are not UTF-8: written as such, they are what a broken encoder sends.
    return text.encode("utf-8", "surrogatepass")


def damage(body: bytes, rng: random.Random) -> bytes:
    form = rng.randrange(9)
    if form == 0:
        return body[: rng.randrange(len(body) + 1)]  # truncated
    if form == 1:
        at = rng.randrange(len(body) + 1)
        return body[:at] + rng.randbytes(rng.randrange(1, 8)) + body[at:]
    if form == 2 and body:
        at = rng.randrange(len(body))
        return body[:at] + bytes([body[at] ^ (1 << rng.randrange(8))]) + body[at + 1 :]
    if form == 3:
        return b"\xef\xbb\xbf" + body  # a byte order mark
    if form == 4:
        return body.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
    if form == 5:
        return rng.randbytes(rng.randrange(64))
    if form == 6:  # one byte over the limit, or far under it
        size = rng.choice((10, 100, 1000, settings.MQTT_MAX_PAYLOAD_BYTES))
        return body[:-1] + b', "pad": "' + b"x" * size + b'"}'
    if form == 7:
        return rng.choice((b"", b"[]", b"1", b'"x"', b"null", b"true", b"{}", b"{", b"}"))
    return body.replace(b"}", b"", 1)


BAD_IDS = ("", "+", "#", "a+b", "a#", "a\x00b", "a\nb", "sensor-1\n", "-x", "é", "x" * 65, " a")


def broken_topic(topic: str, rng: random.Random) -> str:
    prefix, _, rest = topic.partition("/")
    source_id, _, segment = rest.partition("/")
    form = rng.randrange(10)
    if form == 0:
        return f"{prefix}/{rng.choice((*BAD_IDS, random_text(rng)))}/{segment}"
    if form == 1:
        return (
            f"{prefix}/{source_id}/{rng.choice(('', 's' * 33, 'x/y', '#', '+', random_text(rng)))}"
        )
    if form == 2:
        at = rng.randrange(len(topic) + 1)
        return topic[:at] + rng.choice("\x00\n+#/ ") + topic[at:]
    if form == 3:
        return topic + "/x" * rng.choice((1, 100, 40_000))
    if form == 4:
        return f"{prefix}/{source_id}"
    if form == 5:
        return topic.upper()
    if form == 6:
        return rng.choice(("", "#", "+", "$SYS/broker", "device", "/device/x/telemetry"))
    if form == 7:
        return rest
    return random_text(rng)


# --- Hypothesis: the base messages -----------------------------------------------------------


def _words(values: Any) -> st.SearchStrategy[str]:
    words = [str(value) for value in values]
    return st.sampled_from(words + [word.lower() for word in words] + [" panic ", "Fire"])


_percent = st.floats(0, 100)
# Each kind's fields, with values a well-behaved device sends.
GOOD_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "telemetry": {
        "battery": _percent,
        "signal": st.integers(-120, 0),
        "temperature": st.floats(-40, 80),
        "connectivity": st.sampled_from(["wifi", "LTE", "4g", "ethernet"]),
    },
    "gps": {"lat": st.floats(-90, 90), "lon": st.floats(-180, 180), "accuracy": st.floats(0, 500)},
    "sensor": {
        "type": st.sampled_from(["smoke", "door", "temperature", "Humidity"]),
        "value": st.floats(-50, 500),
        "state": st.sampled_from(["ALARM", "forced", "closed", "ok"]),
    },
    "alert": {
        "alert_type": _words(DEVICE_ALERT_TYPES),
        "severity": _words(Severity),
        "message": st.text(max_size=60),
        "location": st.fixed_dictionaries({"lat": st.floats(-90, 90), "lon": st.floats(-180, 180)}),
    },
    "command_ack": {
        "command_id": st.uuids().map(str),
        "result": _words(CommandResult),
        "detail": st.text(max_size=60),
    },
    "system_health": {
        "cpu": _percent,
        "memory": _percent,
        "disk": _percent,
        "uptime": st.integers(0, 10**9),
    },
}
CLAIMS = ("device_id", "guard_id", "sensor_id")  # the payload's own word for its source
COMMON_FIELDS = ("timestamp", "msg_id", *CLAIMS)
JSON_VALUES = st.recursive(
    st.one_of(
        st.sampled_from(AWKWARD_VALUES),
        st.integers(),
        st.floats(),
        st.text(max_size=40),
        st.booleans(),
        st.none(),
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@dataclass(frozen=True)
class Drop:
    """A base mutation that removes the field (its repr seeds the mutator, so not object())."""


DROP = Drop()


@dataclass(frozen=True)
class Base:
    """A message drawn by hypothesis: a valid payload, the mutations hypothesis chose for it,
    and the seed of the mutator that makes its variants."""

    topic: str
    document: dict[str, Any]
    mutations: tuple[tuple[str, Any], ...]
    ascii_only: bool
    damaged: bool
    seed: int

    def prefix_and_segment(self) -> tuple[str, str]:
        prefix, _, rest = self.topic.partition("/")
        return prefix, rest.partition("/")[2]

    def mutated(self) -> dict[str, Any]:
        document = dict(self.document)
        for key, value in self.mutations:
            if isinstance(value, Drop):
                document.pop(key, None)
            else:
                document[key] = value
        return document


@st.composite
def bases(draw: st.DrawFn) -> Base:
    """A device message: a topic kind's valid payload, and 0-3 fields mutated, dropped or added."""
    topic_kind = draw(st.sampled_from(TOPIC_KINDS))
    kind = topic_kind.name if draw(st.integers(0, 9)) else draw(st.sampled_from(list(DEVICES)))
    source_id = draw(
        st.sampled_from([DEVICES[topic_kind.name]] * 8 + [*DEVICES.values(), *STRANGERS])
    )
    segment = draw(st.sampled_from(sorted(topic_kind.segments or {"panic", "status", "fire"})))

    document: dict[str, Any] = {"timestamp": Ago(draw(st.integers(-60, 3600)))}
    schema = KINDS_BY_NAME[kind].schema
    for name, values in GOOD_FIELDS[kind].items():
        if schema.model_fields[name].is_required() or draw(st.integers(0, 3)):
            document[name] = draw(values)
    if draw(st.booleans()):
        document["msg_id"] = draw(st.integers(0, 10**6).map(str) | st.text(max_size=70))
    if draw(st.integers(0, 3)) == 0:
        document[draw(st.sampled_from(sorted({"device_id", schema.source_field})))] = source_id
    mutations = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*GOOD_FIELDS[kind], *COMMON_FIELDS]) | st.text(max_size=12))
        value = draw(
            st.just(DROP) | st.sampled_from(RAW_TOKENS).map(Raw) | JSON_VALUES | JSON_VALUES
        )
        mutations.append((key, value))
    return Base(
        topic=f"{topic_kind.prefix}{source_id}/{segment}",
        document=document,
        mutations=tuple(mutations),
        ascii_only=draw(st.booleans()),
        damaged=draw(st.integers(0, 9)) == 0,
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def expand(base: Base, count: int) -> Iterator[tuple[str, bytes]]:
    """The base as hypothesis drew it, then count - 1 variants by a mutator seeded from it:
    each starts from the valid payload or the drawn one and changes 0-3 things more."""
    # Seeded with all of the base: hypothesis draws small seeds often, and bases sharing one
    # would otherwise share their variants' choices.
    rng = random.Random(repr(base))
    prefix, segment = base.prefix_and_segment()
    yield base.topic, maybe_damaged(serialize(base.mutated(), base.ascii_only), base.damaged, rng)
    for _ in range(count - 1):
        topic = base.topic
        document = base.mutated() if rng.random() < 0.3 else dict(base.document)
        for _ in range(rng.choice((0, 0, 0, 0, 1, 1, 2, 3))):
            mutate(document, rng)
        form = rng.randrange(10)
        if form == 0:  # a valid id never heard before: the registry cache must stay bounded
            source_id = f"dev-{rng.getrandbits(48):x}"
            topic = f"{prefix}/{source_id}/{segment}"
            document.update((name, source_id) for name in CLAIMS if name in document)
        elif form == 1:
            topic = broken_topic(topic, rng)
        body = serialize(document, rng.random() < 0.5)
        yield topic, maybe_damaged(body, rng.random() < 0.1, rng)


def maybe_damaged(body: bytes, damaged: bool, rng: random.Random) -> bytes:
    return damage(body, rng) if damaged else body


def mutate(document: dict[str, Any], rng: random.Random) -> None:
    form = rng.randrange(6)
    key = rng.choice(list(document)) if document and rng.random() < 0.8 else random_text(rng)
    if form == 0:
        document.pop(key, None)
    elif form == 1:
        document["timestamp"] = random_timestamp(rng)
    elif form == 2:
        document[rng.choice(CLAIMS)] = rng.choice((*DEVICES.values(), *STRANGERS))
    else:
        document[key] = random_value(rng)


def for_each_input(bases_count: int, variants: int, use: Callable[[str, bytes], None]) -> None:
    """Call `use(topic, payload)` for each variant of `bases_count` hypothesis examples."""

    @hypothesis_settings(SETTINGS, max_examples=bases_count)
    @given(bases())
    def run(base: Base) -> None:
        for topic, payload in expand(base, variants):
            use(topic, payload)

    run()
