"""Replaying a dead letter: through the same intake checks as a live message, then to Celery."""

from __future__ import annotations

from django.utils import timezone

from apps.core.models import DeadLetter, ProcessedMessage
from apps.mqtt.intake import Envelope, Intake, Rejection


def replay(letter: DeadLetter, intake: Intake | None = None) -> str | None:
    """Enqueue the message again; None on success, else why it is still refused."""
    from intelliwiz_config.celery import app

    if letter.envelope is not None:
        # Failed in processing: the validated envelope goes back as it was, same key. Its
        # effects were never applied, so its claim in the ledger (if any) is released.
        envelope = Envelope.from_message(letter.envelope)
        ProcessedMessage.objects.filter(key=envelope.key).delete()
    else:
        if letter.payload_truncated:
            return f"only the first {len(bytes(letter.payload))} bytes were kept; cannot replay"
        outcome = (intake or Intake()).check(letter.topic, bytes(letter.payload))
        if isinstance(outcome, Rejection):
            return f"{outcome.reason.value}: {outcome.detail}"
        envelope = outcome
    app.send_task(envelope.task_name, args=[[envelope.to_message()]])
    letter.replayed_at = timezone.now()
    letter.save(update_fields=["replayed_at"])
    return None
