"""The alert types and severities: what devices name in their alerts (apps/devices/messages.py)
and what alerts are stored with (apps/alerts/models.py, which is where the rest of alerts is)."""

from __future__ import annotations

from django.db import models


class AlertType(models.TextChoices):
    PANIC = "PANIC", "Panic"
    SOS = "SOS", "SOS"
    INTRUSION = "INTRUSION", "Intrusion"
    FIRE = "FIRE", "Fire"
    MEDICAL = "MEDICAL", "Medical"
    EQUIPMENT_FAILURE = "EQUIPMENT_FAILURE", "Equipment failure"
    LOW_BATTERY = "LOW_BATTERY", "Low battery"
    GEOFENCE_VIOLATION = "GEOFENCE_VIOLATION", "Geofence violation"
    OFFLINE = "OFFLINE", "Device offline"
    SYSTEM_HEALTH = "SYSTEM_HEALTH", "System resources"
    ANOMALY = "ANOMALY", "Anomalous readings"


# What a device may report on `alert/<id>/<kind>`; the other types are raised by the system's
# own rules (battery, geofences, presence, resources, anomaly models).
DEVICE_ALERT_TYPES = (
    AlertType.PANIC,
    AlertType.SOS,
    AlertType.INTRUSION,
    AlertType.FIRE,
    AlertType.MEDICAL,
    AlertType.EQUIPMENT_FAILURE,
)


class Severity(models.TextChoices):
    CRITICAL = "CRITICAL", "Critical"
    HIGH = "HIGH", "High"
    MEDIUM = "MEDIUM", "Medium"
    LOW = "LOW", "Low"
