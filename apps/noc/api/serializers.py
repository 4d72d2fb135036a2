"""What the REST API reads (query parameters, action and write bodies) and writes (alerts, devices,
geofences, readings).

Alert fields are a superset of `apps.alerts.services.serialize_alert`, so a client sees one shape
whether an alert arrives over the WebSocket or from `/api/alerts/`.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.alerts.models import Alert, AlertStatus, AlertTransition, AlertType, Severity
from apps.devices.commands import (
    COMMAND_NAME_RULE,
    MAX_PARAMS_BYTES,
    MAX_TTL_SECONDS,
    CommandRefused,
    check_command,
)
from apps.devices.models import (
    DEVICE_ID_RULE,
    CommandStatus,
    Device,
    DeviceCommand,
    DeviceCommandTransition,
    Geofence,
    GuardLocation,
    Reading,
    SensorReading,
    SystemHealthSample,
    TelemetryReading,
    geofence_problems,
)
from apps.devices.services import check_new_device_id, register_device

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
    search = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Text the alert's message, device id or site contains (any case).",
    )


class DeviceFilterSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=Device.Status.choices, required=False)
    kind = serializers.ChoiceField(choices=Device.Kind.choices, required=False)
    site = serializers.CharField(required=False)
    search = serializers.CharField(
        required=False, max_length=100, help_text="Part of the device's id, name or site."
    )


class GeofenceFilterSerializer(serializers.Serializer[Any]):
    active = serializers.BooleanField(required=False)


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


class AlertTransitionSerializer(serializers.ModelSerializer[AlertTransition]):
    by = serializers.CharField(
        source="by.username",
        read_only=True,
        allow_null=True,
        help_text="The operator; null when the system moved it (a device came back, say).",
    )

    class Meta:
        model = AlertTransition
        fields = ["from_status", "to_status", "by", "at", "note"]
        read_only_fields = fields


class AlertDetailSerializer(AlertSerializer):
    """An alert with its history: every move of its status, oldest first."""

    history = AlertTransitionSerializer(source="transitions", many=True, read_only=True)

    class Meta(AlertSerializer.Meta):
        fields = [*AlertSerializer.Meta.fields, "history"]
        read_only_fields = fields


class DeviceSerializer(serializers.ModelSerializer[Device]):
    """A device; POST registers one in the caller's tenant (as `manage.py register_device`),
    PATCH renames or moves it. Its id and kind are fixed once registered: its topics, ACL and
    credentials name the id, and a guard tracker has its Guard."""

    # Checked by check_new_device_id (register_device's rules), not the model field's validators.
    device_id = serializers.CharField(max_length=64, help_text=f"{DEVICE_ID_RULE}; unique.")

    class Meta:
        model = Device
        fields = [
            "device_id",
            "name",
            "kind",
            "site",
            "report_interval",
            "status",
            "battery",
            "signal",
            "last_seen",
        ]
        read_only_fields = ["status", "battery", "signal", "last_seen"]
        extra_kwargs = {"report_interval": {"required": False}}

    def validate_device_id(self, device_id: str) -> str:
        if self.instance is not None:
            if device_id != self.instance.device_id:
                raise serializers.ValidationError("a device's id cannot change")
            return device_id
        try:
            check_new_device_id(device_id)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return device_id

    def validate_kind(self, kind: str) -> str:
        if self.instance is not None and kind != self.instance.kind:
            raise serializers.ValidationError("a device's kind cannot change")
        return kind

    def create(self, validated_data: dict[str, Any]) -> Device:
        device, created = register_device(
            validated_data["tenant"],
            validated_data["device_id"],
            validated_data.get("kind", Device.Kind.OTHER),
            site=validated_data.get("site", ""),
            name=validated_data.get("name", ""),
            report_interval=validated_data.get("report_interval"),
        )
        if not created:  # in this tenant or another: ids are unique system-wide
            raise serializers.ValidationError(
                {"device_id": ["a device with this id is already registered"]}
            )
        return device


class GeofenceSerializer(serializers.ModelSerializer[Geofence]):
    polygon = serializers.JSONField(
        required=False, help_text="A polygon's points, each [lat, lon]; [] for a circle."
    )

    class Meta:
        model = Geofence
        fields = [
            "id",
            "name",
            "shape",
            "center_lat",
            "center_lon",
            "radius_m",
            "polygon",
            "active",
        ]
        read_only_fields = ["id"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        def value(name: str) -> Any:
            return attrs.get(name, getattr(self.instance, name, None))

        # The rules Geofence.clean applies in the admin.
        problems = geofence_problems(
            value("shape"),
            value("center_lat"),
            value("center_lon"),
            value("radius_m"),
            value("polygon") or [],
        )
        if problems:
            raise serializers.ValidationError({name: [text] for name, text in problems.items()})
        return attrs


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


# --- Device commands -----------------------------------------------------------------------


class CommandRequestSerializer(serializers.Serializer[Any]):
    command = serializers.CharField(
        max_length=64, help_text=f"{COMMAND_NAME_RULE}: the last level of command/<device_id>/…"
    )
    params = serializers.JSONField(
        required=False,
        default=dict,
        help_text=f"A JSON object, at most {MAX_PARAMS_BYTES} bytes as compact JSON.",
    )
    ttl_seconds = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_TTL_SECONDS,
        help_text="Seconds before the command EXPIRES (default DEVICE_COMMAND_TTL_SECONDS).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:  # the rules of apps/devices/commands.py, which the downlink applies too
            check_command(attrs["command"], attrs.get("params", {}), attrs.get("ttl_seconds"))
        except CommandRefused as exc:
            raise serializers.ValidationError(str(exc)) from None
        return attrs


class CommandFilterSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=CommandStatus.choices, required=False)
    device = serializers.CharField(required=False, help_text="The device id.")


class CommandTransitionSerializer(serializers.ModelSerializer[DeviceCommandTransition]):
    by = serializers.CharField(source="by.username", read_only=True, allow_null=True)

    class Meta:
        model = DeviceCommandTransition
        fields = ["from_status", "to_status", "by", "at", "note"]
        read_only_fields = fields


class CommandSerializer(serializers.ModelSerializer[DeviceCommand]):
    """The fields of apps.devices.commands.serialize_command (command_updated), and more."""

    command_id = serializers.UUIDField(source="id", read_only=True)
    device_id = serializers.CharField(source="device.device_id", read_only=True)
    site = serializers.CharField(source="device.site", read_only=True)
    command = serializers.CharField(source="name", read_only=True)
    created_by = serializers.CharField(
        source="created_by.username", read_only=True, allow_null=True
    )

    class Meta:
        model = DeviceCommand
        fields = [
            "command_id",
            "device_id",
            "site",
            "command",
            "params",
            "status",
            "result_detail",
            "created_by",
            "created_at",
            "updated_at",
            "expires_at",
        ]
        read_only_fields = fields


class CommandDetailSerializer(CommandSerializer):
    history = CommandTransitionSerializer(source="transitions", many=True, read_only=True)

    class Meta(CommandSerializer.Meta):
        fields = [*CommandSerializer.Meta.fields, "history"]
        read_only_fields = fields
