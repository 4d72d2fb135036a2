"""What the REST API reads (query parameters, action bodies) and writes (alerts, devices, readings).

Alert fields are a superset of `apps.alerts.services.serialize_alert`, so a client sees one shape
whether an alert arrives over the WebSocket or from `/api/alerts/`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.alerts.models import Alert, AlertStatus, AlertType, Severity
from apps.devices.models import (
    Device,
    GuardLocation,
    Reading,
    SensorReading,
    SystemHealthSample,
    TelemetryReading,
)

# --- Query parameters and request bodies ---------------------------------------------------


class AlertFilterSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=AlertStatus.choices, required=False)
    severity = serializers.ChoiceField(choices=Severity.choices, required=False)
    alert_type = serializers.ChoiceField(choices=AlertType.choices, required=False)
    device = serializers.CharField(
        required=False, help_text="The device id the alert is about (its source_id)."
    )
    site = serializers.CharField(required=False)
    active = serializers.BooleanField(
        required=False,
        help_text="true: NEW, ACKNOWLEDGED or IN_PROGRESS only; false: closed alerts only.",
    )


class DeviceFilterSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=Device.Status.choices, required=False)
    kind = serializers.ChoiceField(choices=Device.Kind.choices, required=False)
    site = serializers.CharField(required=False)


class AlertNoteSerializer(serializers.Serializer[Any]):
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


# --- Alerts and devices --------------------------------------------------------------------


class AlertSerializer(serializers.ModelSerializer[Alert]):
    site = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = [
            "id",
            "source_id",
            "alert_type",
            "severity",
            "status",
            "message",
            "lat",
            "lon",
            "count",
            "site",
            "first_seen",
            "last_seen",
            "resolved_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_site(self, alert: Alert) -> str:
        return alert.device.site if alert.device else ""


class DeviceSerializer(serializers.ModelSerializer[Device]):
    class Meta:
        model = Device
        fields = ["device_id", "name", "kind", "site", "status", "battery", "signal", "last_seen"]
        read_only_fields = fields


# --- Readings ------------------------------------------------------------------------------

READING_FIELDS = ["recorded_at", "received_at"]


class TelemetryReadingSerializer(serializers.ModelSerializer[TelemetryReading]):
    class Meta:
        model = TelemetryReading
        fields = [*READING_FIELDS, "battery", "signal", "temperature", "connectivity"]
        read_only_fields = fields


class GuardLocationSerializer(serializers.ModelSerializer[GuardLocation]):
    class Meta:
        model = GuardLocation
        fields = [*READING_FIELDS, "lat", "lon", "accuracy", "inside_geofence"]
        read_only_fields = fields


class SensorReadingSerializer(serializers.ModelSerializer[SensorReading]):
    class Meta:
        model = SensorReading
        fields = [*READING_FIELDS, "sensor_type", "value", "state"]
        read_only_fields = fields


class SystemHealthSampleSerializer(serializers.ModelSerializer[SystemHealthSample]):
    class Meta:
        model = SystemHealthSample
        fields = [*READING_FIELDS, "cpu", "memory", "disk", "uptime"]
        read_only_fields = fields


# The `kind` query parameter of /api/devices/<device_id>/readings/ → how that kind is written.
READING_SERIALIZERS: dict[str, type[serializers.ModelSerializer[Any]]] = {
    "telemetry": TelemetryReadingSerializer,
    "gps": GuardLocationSerializer,
    "sensor": SensorReadingSerializer,
    "system_health": SystemHealthSampleSerializer,
}


class ReadingQuerySerializer(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=list(READING_SERIALIZERS))
    since = serializers.DateTimeField(
        required=False, help_text="ISO 8601; readings recorded at or after this time."
    )
    until = serializers.DateTimeField(
        required=False, help_text="ISO 8601; readings recorded before this time."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since is not None and until is not None and until <= since:
            raise serializers.ValidationError({"until": "must be later than since"})
        return attrs


def readings_of(
    serializer_class: type[serializers.ModelSerializer[Any]], device: Device
) -> QuerySet[Reading]:
    """A device's readings of the kind this serializer writes, newest first."""
    model: type[Reading] = serializer_class.Meta.model
    return model._default_manager.filter(device=device).order_by("-recorded_at")


def latest_reading(
    serializer_class: type[serializers.ModelSerializer[Any]], device: Device
) -> dict[str, Any] | None:
    reading = readings_of(serializer_class, device).first()
    return None if reading is None else dict(serializer_class(reading).data)


class DeviceDetailSerializer(DeviceSerializer):
    latest_telemetry = serializers.SerializerMethodField()
    latest_location = serializers.SerializerMethodField()
    latest_sensor_reading = serializers.SerializerMethodField()

    class Meta(DeviceSerializer.Meta):
        fields = [
            *DeviceSerializer.Meta.fields,
            "latest_telemetry",
            "latest_location",
            "latest_sensor_reading",
        ]
        read_only_fields = fields

    @extend_schema_field(TelemetryReadingSerializer(allow_null=True))
    def get_latest_telemetry(self, device: Device) -> dict[str, Any] | None:
        return latest_reading(TelemetryReadingSerializer, device)

    @extend_schema_field(GuardLocationSerializer(allow_null=True))
    def get_latest_location(self, device: Device) -> dict[str, Any] | None:
        return latest_reading(GuardLocationSerializer, device)

    @extend_schema_field(SensorReadingSerializer(allow_null=True))
    def get_latest_sensor_reading(self, device: Device) -> dict[str, Any] | None:
        return latest_reading(SensorReadingSerializer, device)
