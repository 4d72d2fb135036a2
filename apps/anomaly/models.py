"""Anomaly models and the record of every training run.

An `AnomalyModel` is one fitted estimate for one tenant and device kind, numbered from 1. Only
the training task writes these rows; the estimate is JSON numbers (never a pickle) with their
SHA-256, checked before they are loaded (apps/anomaly/registry.py). A `TrainingRun` records
each attempt, including those that kept the previous model, and why.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from apps.devices.models import Device
from apps.tenants.models import Tenant


class AnomalyModel(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device_kind = models.CharField(max_length=20, choices=Device.Kind.choices)
    version = models.PositiveIntegerField()
    # The newest good model of its tenant and kind: the one readings are scored with.
    is_current = models.BooleanField(default=True)
    algorithm = models.CharField(max_length=40)
    features = models.JSONField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    sample_count = models.PositiveIntegerField()
    # Readings this far or further from normal (robust distance, in deviations) raise ANOMALY.
    threshold = models.FloatField()
    metrics = models.JSONField(default=dict)
    library_versions = models.JSONField(default=dict)
    artifact = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant", "device_kind", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "device_kind", "version"], name="anomaly_model_version"
            ),
            models.UniqueConstraint(
                fields=["tenant", "device_kind"],
                condition=Q(is_current=True),
                name="one_current_anomaly_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.device_kind} v{self.version}"


class TrainingRun(models.Model):
    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        TRAINED = "trained", "New model"
        KEPT = "kept", "Previous model kept"
        FAILED = "failed", "Failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device_kind = models.CharField(max_length=20, choices=Device.Kind.choices)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.RUNNING)
    reason = models.TextField(blank=True)
    samples = models.PositiveIntegerField(default=0)  # readings read, complete or not
    model = models.ForeignKey(AnomalyModel, on_delete=models.SET_NULL, null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["tenant", "device_kind", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.device_kind} {self.outcome}"
