"""The envelope: one validated device message on its way through Celery (JSON-serialisable).

Intake (apps/mqtt/intake.py) builds it; the batch runner (apps/core/tasks/base.py), the
idempotency ledger and the dead-letter store read it. A task message carries a list of
`to_message()` dicts, so the fields here are part of what is queued in Redis: add fields with
defaults, never rename one, or messages queued by the previous release cannot be read.
"""

from __future__ import annotations

from typing import Any

import msgspec


def message_key(topic: str, msg_id: str, device_time: str) -> str:
    """The idempotency key of a message with a device message id: `<time>|<topic>#<msg_id>`.

    The device's UTC time (`20261201T101500.123456Z`) comes first so that the ledger's unique
    index takes a batch's keys near its end instead of at one place per device: at 150,000 keys
    that was 13 % of the general worker's CPU (docs/performance.md). Until migration core.0004
    the same parts were written `<topic>#<msg_id>@<time>`; `current_key` reads both.
    """
    return f"{device_time}|{topic}#{msg_id}"


def current_key(key: str) -> str:
    """The key in today's form. A task queued or a dead letter kept by an earlier release
    carries the former one (`<topic>#<msg_id>@<time>`), which the ledger, rewritten by migration
    core.0004, no longer holds; `Envelope.from_message` turns it into today's. A digest key
    (`sha256:...`) never changed."""
    head, hash_sign, rest = key.partition("#")
    if not hash_sign or "|" in head:  # a digest, or already time first
        return key
    msg_id, at, device_time = rest.rpartition("@")  # the time holds no "@"; an id may
    return f"{device_time}|{head}#{msg_id}" if at else key


class Envelope(msgspec.Struct, frozen=True):
    """A msgspec struct, not a frozen dataclass: built for every message in the subscriber and
    again in the worker, where a frozen dataclass's `__init__` (a `object.__setattr__` per
    field) took 0.8 us, five times as long. As before, its constructor checks no types."""

    key: str  # the idempotency key; see apps/mqtt/intake.py idempotency_key()
    topic: str
    source_id: str  # the device id, from the topic
    kind: str  # the topic kind's name (apps/mqtt/topics.py), e.g. "telemetry"
    payload: dict[str, Any]  # validated by the kind's schema, in JSON form
    received_at: float  # epoch seconds when the subscriber received it

    def to_message(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy of the payload cost more than validating it.
        return {
            "key": self.key,
            "topic": self.topic,
            "source_id": self.source_id,
            "kind": self.kind,
            "payload": self.payload,
            "received_at": self.received_at,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Envelope:
        # A task or a dead letter of an earlier release may carry the key's former form. A
        # message without a string key stays as it came: refused by the constructor or later,
        # as before, and dead-lettered (core/tasks/base.py), never dropped here.
        if not isinstance(message, dict):  # a TypeError, which the batch runner dead-letters
            raise TypeError(f"an envelope is a JSON object, not {type(message).__name__}")
        key = message.get("key")
        if isinstance(key, str):
            message = {**message, "key": current_key(key)}
        return cls(**message)
