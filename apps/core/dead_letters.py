"""Writing to the dead-letter store: the one place that truncates, stores and counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apps.core import metrics
from apps.core.models import DeadLetter


@dataclass(frozen=True)
class Letter:
    """A message that can never succeed, and why."""

    stage: str
    reason: str
    detail: str
    topic: str
    payload: bytes
    received_at: float
    envelope: dict[str, Any] | None = None
    payload_size: int | None = None  # when `payload` is already cut short


def store(letters: list[Letter]) -> None:
    """Keep the letters (first 4 KiB of each payload) and count them by stage and reason."""
    if not letters:
        return
    keep = DeadLetter.PAYLOAD_KEEP_BYTES
    DeadLetter.objects.bulk_create(
        [
            DeadLetter(
                stage=letter.stage,
                reason=letter.reason,
                detail=letter.detail,
                topic=letter.topic[:512],
                payload=letter.payload[:keep],
                payload_size=(
                    len(letter.payload) if letter.payload_size is None else letter.payload_size
                ),
                received_at=datetime.fromtimestamp(letter.received_at, tz=UTC),
                envelope=letter.envelope,
            )
            for letter in letters
        ]
    )
    for letter in letters:
        metrics.DEAD_LETTERS.labels(stage=letter.stage, reason=letter.reason).inc()
