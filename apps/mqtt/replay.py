"""Replaying a dead letter: through the same intake checks as a live message, then to Celery."""

from __future__ import annotations

from django.utils import timezone

from apps.core.envelope import Envelope
from apps.core.models import DeadLetter
from apps.core.tasks import ledger
from apps.core.tasks.base import UNCLAIMED_REASONS, enqueue
from apps.mqtt.intake import Intake, Rejection
from apps.mqtt.topics import KINDS_BY_NAME


def replay(letter: DeadLetter, intake: Intake | None = None) -> str | None:
    """Enqueue the message again; None on success, else why it is still refused."""
    if letter.envelope is not None:
        # Dead-lettered in processing: the validated envelope goes back as it was, same key.
        # A handler's refusal claimed the key in the transaction that stored the letter: that
        # claim is the letter's own, released. A batch that failed or killed its worker claimed
        # nothing; a claim then found is another copy's, applied, and stays: the replay counts
        # as a duplicate rather than applying the message twice.
        envelope = Envelope.from_message(letter.envelope)
        if letter.reason not in UNCLAIMED_REASONS:
            ledger.release(envelope.key)
    else:
        if letter.payload_truncated:
            return f"only the first {len(bytes(letter.payload))} bytes were kept; cannot replay"
        outcome = (intake or Intake()).check(letter.topic, bytes(letter.payload))
        if isinstance(outcome, Rejection):
            return f"{outcome.reason.value}: {outcome.detail}"
        envelope = outcome
    enqueue(KINDS_BY_NAME[envelope.kind].task, [envelope])
    letter.replayed_at = timezone.now()
    letter.save(update_fields=["replayed_at"])
    return None
