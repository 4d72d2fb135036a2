"""Delivery bookkeeping shared by every message kind: the idempotency ledger, dead letters and
the broadcast outbox."""

from __future__ import annotations

from django.db import models


class ProcessedMessage(models.Model):
    """One row per message whose effects are committed. The unique key makes redelivery a no-op.

    Rows are written in the same transaction as the message's effects, so either both exist or
    neither does, whatever crashes in between.
    """

    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=24)
    processed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.key


class DeadLetter(models.Model):
    """A message that can never succeed, kept with its reason for inspection and replay."""

    class Stage(models.TextChoices):
        INTAKE = "intake", "Rejected at intake"
        PROCESSING = "processing", "Failed in processing"

    PAYLOAD_KEEP_BYTES = 4096

    stage = models.CharField(max_length=12, choices=Stage.choices)
    reason = models.CharField(max_length=32, db_index=True)
    detail = models.TextField(blank=True)
    topic = models.CharField(max_length=512)
    payload = models.BinaryField(max_length=PAYLOAD_KEEP_BYTES)
    payload_size = models.PositiveIntegerField()
    received_at = models.DateTimeField()
    # For a message that failed in processing: the validated envelope, replayed as it was.
    envelope = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.reason}: {self.topic}"

    @property
    def payload_truncated(self) -> bool:
        return self.payload_size > len(self.payload)

    def payload_text(self) -> str:
        return bytes(self.payload).decode("utf-8", errors="replace")


class PendingBroadcast(models.Model):
    """NOC events of a committed transaction not yet known to be sent (apps/core/outbox.py).

    Written in the same transaction as the effects the events describe; deleted once they have
    reached the channel layer, so a process that dies in between leaves it here to be resent.
    """

    events = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{len(self.events)} events of {self.created_at:%Y-%m-%d %H:%M:%S}"
