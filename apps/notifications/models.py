"""Who is told of which alerts (NotificationRule), and every attempt to tell them.

A rule belongs to one tenant and matches alerts by severity, type and site (an empty list
matches any); its target is a webhook (URL and signing secret) or e-mail addresses. Each
attempt to deliver, and each notification folded into a digest by storm control, is a
NotificationAttempt row: what the tenant's operators see per alert (`/api/alerts/<id>/
notifications/`).
"""

from __future__ import annotations

import secrets

from django.db import models

from apps.alerts.models import Alert
from apps.tenants.models import Tenant


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class Channel(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    EMAIL = "email", "E-mail"


class NotificationRule(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="notification_rules")
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    # Each a list of values; empty: any. Values are AlertType / Severity names, or sites.
    severities = models.JSONField(default=list, blank=True)
    alert_types = models.JSONField(default=list, blank=True)
    sites = models.JSONField(default=list, blank=True)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    webhook_url = models.URLField(max_length=500, blank=True)
    # Signs each delivery (HMAC-SHA256, docs/notifications.md); never shown after creation.
    webhook_secret = models.CharField(max_length=128, blank=True, default=new_webhook_secret)
    emails = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.channel})"

    def recipients(self) -> list[str]:
        """Whom one notification goes to: the webhook URL, or each e-mail address."""
        if self.channel == Channel.WEBHOOK:
            return [self.webhook_url] if self.webhook_url else []
        return [str(address) for address in self.emails]


class Outcome(models.TextChoices):
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (retried while attempts remain)"
    REJECTED = "rejected", "Refused by the receiver (4xx, not retried)"
    CIRCUIT_OPEN = "circuit_open", "Not attempted: the endpoint's circuit breaker is open"
    FOLDED = "folded", "Folded into the recipient's digest (storm control)"
    GAVE_UP = "gave_up", "Failed, no attempts left"


class Kind(models.TextChoices):
    ALERT = "alert", "One alert"
    DIGEST = "digest", "Digest of folded alerts"


class NotificationAttempt(models.Model):
    """One try at one delivery. A delivery (`delivery_id`) keeps its id through its retries."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # Empty for a digest, which covers several alerts.
    alert = models.ForeignKey(
        Alert, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    rule = models.ForeignKey(
        NotificationRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    delivery_id = models.UUIDField()
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.ALERT)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    # As shown to people: an e-mail address, or a webhook's scheme://host:port only.
    recipient = models.CharField(max_length=300)
    attempt = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["alert", "at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.delivery_id} #{self.attempt}: {self.outcome}"
