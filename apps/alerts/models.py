"""Alerts and their lifecycle: NEW → ACKNOWLEDGED → IN_PROGRESS → RESOLVED | FALSE_ALARM.

At most one *active* alert exists per tenant, source and type (a partial unique index); a repeat
raises its count and last-seen time instead of adding a row.

AlertType, Severity and AlertStatus are the system's one vocabulary for alerts: the device
message schemas, the REST API and the NOC stream's filters all use these. AlertType and Severity
are defined in apps/core/alert_types.py, below the message contract (apps/devices/messages.py)
that names them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.core.alert_types import DEVICE_ALERT_TYPES as DEVICE_ALERT_TYPES
from apps.core.alert_types import AlertType as AlertType
from apps.core.alert_types import Severity as Severity
from apps.devices.models import Device
from apps.tenants.models import Tenant


class AlertStatus(models.TextChoices):
    NEW = "NEW", "New"
    ACKNOWLEDGED = "ACKNOWLEDGED", "Acknowledged"
    IN_PROGRESS = "IN_PROGRESS", "In progress"
    RESOLVED = "RESOLVED", "Resolved"
    FALSE_ALARM = "FALSE_ALARM", "False alarm"


ACTIVE_STATUSES = (AlertStatus.NEW, AlertStatus.ACKNOWLEDGED, AlertStatus.IN_PROGRESS)
CLOSED_STATUSES = (AlertStatus.RESOLVED, AlertStatus.FALSE_ALARM)

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    AlertStatus.NEW: frozenset(
        {
            AlertStatus.ACKNOWLEDGED,
            AlertStatus.IN_PROGRESS,
            AlertStatus.RESOLVED,
            AlertStatus.FALSE_ALARM,
        }
    ),
    AlertStatus.ACKNOWLEDGED: frozenset(
        {AlertStatus.IN_PROGRESS, AlertStatus.RESOLVED, AlertStatus.FALSE_ALARM}
    ),
    AlertStatus.IN_PROGRESS: frozenset({AlertStatus.RESOLVED, AlertStatus.FALSE_ALARM}),
    AlertStatus.RESOLVED: frozenset(),
    AlertStatus.FALSE_ALARM: frozenset(),
}


class Alert(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alerts")
    device = models.ForeignKey(
        Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    source_id = models.CharField(max_length=64)
    alert_type = models.CharField(max_length=24, choices=AlertType.choices)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    status = models.CharField(max_length=12, choices=AlertStatus.choices, default=AlertStatus.NEW)
    message = models.TextField(blank=True)
    lat = models.FloatField(null=True, blank=True)
    lon = models.FloatField(null=True, blank=True)
    count = models.PositiveIntegerField(default=1)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "source_id", "alert_type"],
                condition=Q(status__in=["NEW", "ACKNOWLEDGED", "IN_PROGRESS"]),
                name="one_active_alert_per_tenant_source_type",
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "status", "-last_seen"]),
            # Every device batch looks up its devices' active alerts by source (services.
            # active_alerts): without it, a scan of every alert ever raised, per batch.
            models.Index(
                fields=["source_id", "alert_type", "status"], name="alert_source_type_status"
            ),
        ]
        permissions = [("view_noc_dashboard", "Can watch the NOC dashboard and stream")]

    def __str__(self) -> str:
        return f"{self.alert_type} {self.source_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class AlertTransition(models.Model):
    """Who moved an alert from one status to another, and when. `by` is empty for the system."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=12, choices=AlertStatus.choices)
    to_status = models.CharField(max_length=12, choices=AlertStatus.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.from_status} → {self.to_status}"
