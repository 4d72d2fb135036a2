"""Replaying a dead letter: through the same intake checks as a live message, then to Celery."""

from __future__ import annotations

from django.utils import timezone

from apps.core.envelope import Envelope
from apps.core.models import DeadLetter
from apps.core.tasks import ledger
from apps.core.tasks.base import enqueue
from apps.mqtt.intake import Intake, Rejection
from apps.mqtt.topics import KINDS_BY_NAME


def replay(letter: DeadLetter, intake: Intake | None = None) -> str | None:
    """Enqueue the message again; None on success, else why it is still refused."""
    if letter.envelope is not None:
        # Failed in processing: the validated envelope goes back as it was, same key. Its
        # effects were never applied, so its claim in the ledger (if any) is released.
        envelope = Envelope.from_message(letter.envelope)
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
