"""The envelope: one validated device message on its way through Celery (JSON-serialisable).

Intake (apps/mqtt/intake.py) builds it; the batch runner (apps/core/tasks/base.py), the
idempotency ledger and the dead-letter store read it. A task message carries a list of
`to_message()` dicts, so the fields here are part of what is queued in Redis: add fields with
defaults, never rename one, or messages queued by the previous release cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Envelope:
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
        return cls(**message)
