"""The device registry and what devices report. Every row belongs to a tenant.

A reading carries its message's idempotency key, unindexed: the idempotency ledger
(core.models.ProcessedMessage), claimed in the transaction that inserts the reading, is what
keeps a redelivered message from adding a second row.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from apps.tenants.models import Tenant


# What a device id may be: it stands in MQTT topics, ACL patterns and file names. Checked whole
# (`fullmatch`): `$` in a pattern would also accept a trailing newline.
def word_pattern(max_length: int) -> re.Pattern[str]:
    """A word of 1 to `max_length` letters, digits or _ . : -, starting with a letter or digit:
    device ids, and the last level of a topic (apps/mqtt/topics.py)."""
    return re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{max_length - 1}}}")


def word_rule(max_length: int) -> str:
    return f"1-{max_length} letters, digits or _ . : -, starting with a letter or digit"


DEVICE_ID_PATTERN = word_pattern(64)
DEVICE_ID_RULE = word_rule(64)


def is_device_id(value: object) -> bool:
    return isinstance(value, str) and DEVICE_ID_PATTERN.fullmatch(value) is not None


RESERVED_ID_RULE = (
    "reserved for the application's MQTT account or client ids "
    "(MQTT_USERNAME, MQTT_CLIENT_ID, MQTT_RESERVED_CLIENT_IDS, each client id also with -urgent)"
)


def is_reserved_id(device_id: str) -> bool:
    """Whether the id is the application's (settings.DEVICE_RESERVED_IDS): a device's id is its
    MQTT user name and, on the device listener, its client id, so it must never be one of these."""
    return device_id in settings.DEVICE_RESERVED_IDS


# The shortest reporting interval a device may be given (DEVICE_OFFLINE_AFTER's minimum).
MIN_REPORT_INTERVAL = timedelta(seconds=10)


class Device(models.Model):
    class Kind(models.TextChoices):
        SENSOR = "sensor", "Sensor"
        PANIC_BUTTON = "panic_button", "Panic button"
        GPS_TRACKER = "gps_tracker", "Guard GPS tracker"
        GATEWAY = "gateway", "Gateway"
        DOOR = "door", "Door sensor"
        SMOKE = "smoke", "Smoke detector"
        CAMERA = "camera", "Camera"
        OTHER = "other", "Other"

    class Status(models.TextChoices):
        UNKNOWN = "UNKNOWN", "Never heard from"
        ONLINE = "ONLINE", "Online"
        OFFLINE = "OFFLINE", "Offline"
        LOW_BATTERY = "LOW_BATTERY", "Low battery"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="devices")
    # The id devices use in their topics (`device/<device_id>/telemetry`): unique system-wide,
    # because the topic is how a message finds its tenant.
    device_id = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(rf"\A{DEVICE_ID_PATTERN.pattern}\Z", DEVICE_ID_RULE)],
    )
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.OTHER)
    name = models.CharField(max_length=100, blank=True)
    site = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.UNKNOWN)
    last_seen = models.DateTimeField(null=True, blank=True)
    # When it last sent a heartbeat (a message of a heartbeat kind: telemetry, system health).
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # How often it reports; empty: as its kind does (DEVICE_REPORT_INTERVALS). Offline detection.
    report_interval = models.DurationField(
        null=True,
        blank=True,
        validators=[MinValueValidator(MIN_REPORT_INTERVAL)],
        help_text=(
            "How often this device reports, e.g. 00:05:00; silent for longer, it goes OFFLINE. "
            "Empty: as its kind does (DEVICE_REPORT_INTERVALS, DEVICE_OFFLINE_AFTER)."
        ),
    )
    battery = models.FloatField(null=True, blank=True)
    signal = models.FloatField(null=True, blank=True)
    auto_registered = models.BooleanField(default=False)
    # Mosquitto-format hash of the device's MQTT password (manage.py device_password).
    mqtt_password_hash = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["device_id"]
        indexes = [models.Index(fields=["tenant", "status"])]

    def __str__(self) -> str:
        return self.device_id

    def clean(self) -> None:
        # The admin's path to a new device; register_device() refuses the same ids.
        if is_reserved_id(self.device_id):
            raise ValidationError({"device_id": f"{self.device_id!r} is {RESERVED_ID_RULE}"})


class Guard(models.Model):
    """A guard on patrol; its tracker publishes on `guard/<device_id>/gps`."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="guards")
    name = models.CharField(max_length=100)
    device = models.OneToOneField(
        Device, on_delete=models.SET_NULL, null=True, blank=True, related_name="guard"
    )
    on_duty = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Geofence(models.Model):
    """An area guards must stay in: a circle (centre + radius) or a polygon of [lat, lon]."""

    class Shape(models.TextChoices):
        CIRCLE = "circle", "Circle"
        POLYGON = "polygon", "Polygon"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="geofences")
    name = models.CharField(max_length=100)
    shape = models.CharField(max_length=10, choices=Shape.choices)
    center_lat = models.FloatField(null=True, blank=True)
    center_lon = models.FloatField(null=True, blank=True)
    radius_m = models.FloatField(null=True, blank=True)
    polygon = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # The admin's check; the REST API (apps/noc/api/serializers.py) applies the same rules.
        problems = geofence_problems(
            self.shape, self.center_lat, self.center_lon, self.radius_m, self.polygon
        )
        if problems:
            raise ValidationError(problems)

    def contains(self, lat: float, lon: float) -> bool:
        if self.shape == self.Shape.CIRCLE:
            if self.center_lat is None or self.center_lon is None or self.radius_m is None:
                return False
            return haversine_m(lat, lon, self.center_lat, self.center_lon) <= self.radius_m
        return point_in_polygon(lat, lon, [(float(p[0]), float(p[1])) for p in self.polygon])


MAX_GEOFENCE_POINTS = 500
MAX_GEOFENCE_RADIUS_M = 100_000.0


def _is_coordinate(value: object, limit: float) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and -limit <= value <= limit


def geofence_problems(
    shape: str,
    center_lat: float | None,
    center_lon: float | None,
    radius_m: float | None,
    polygon: object,
) -> dict[str, str]:
    """What makes a geofence unusable, by field (empty when it is fine): a circle needs a centre
    and a radius up to MAX_GEOFENCE_RADIUS_M; a polygon 3 to MAX_GEOFENCE_POINTS [lat, lon]."""
    problems: dict[str, str] = {}
    if shape == Geofence.Shape.CIRCLE:
        if not _is_coordinate(center_lat, 90):
            problems["center_lat"] = "a circle needs a centre latitude, -90 to 90"
        if not _is_coordinate(center_lon, 180):
            problems["center_lon"] = "a circle needs a centre longitude, -180 to 180"
        if radius_m is None or not 0 < radius_m <= MAX_GEOFENCE_RADIUS_M:
            problems["radius_m"] = (
                f"a circle needs a radius above 0 and at most {MAX_GEOFENCE_RADIUS_M:.0f} m"
            )
    elif shape == Geofence.Shape.POLYGON:
        points = polygon if isinstance(polygon, list) else []
        well_formed = all(
            isinstance(point, list | tuple)
            and len(point) == 2
            and _is_coordinate(point[0], 90)
            and _is_coordinate(point[1], 180)
            for point in points
        )
        if not (3 <= len(points) <= MAX_GEOFENCE_POINTS and well_formed):
            problems["polygon"] = (
                f"a polygon needs 3 to {MAX_GEOFENCE_POINTS} points, each [lat, lon] "
                "with lat -90 to 90 and lon -180 to 180"
            )
    else:
        problems["shape"] = f"one of {', '.join(Geofence.Shape.values)}"
    return problems


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    earth_radius_m = 6_371_000.0
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = math.radians(lat2 - lat1), math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * earth_radius_m * math.asin(math.sqrt(a))


def point_in_polygon(lat: float, lon: float, polygon: list[tuple[float, float]]) -> bool:
    """Ray casting; adequate for site-sized polygons that do not cross the antimeridian."""
    inside = False
    count = len(polygon)
    for i in range(count):
        lat_i, lon_i = polygon[i]
        lat_j, lon_j = polygon[i - 1]
        if (lon_i > lon) != (lon_j > lon):
            crossing = (lat_j - lat_i) * (lon - lon_i) / (lon_j - lon_i) + lat_i
            if lat < crossing:
                inside = not inside
    return inside


class Reading(models.Model):
    """What every stored device message has: tenant, device, times and its idempotency key."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # Two indexes fewer per row than before migration 0009, each written at a random place for
    # every reading: the device's own (the (device, recorded_at) index below serves its lookups
    # and cascades) and a unique one on the key (the ledger's unique key is the one claim; a
    # second cost the general worker 15 % of its CPU at 150,000 readings; docs/performance.md).
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+", db_index=False)
    idempotency_key = models.CharField(max_length=200)
    recorded_at = models.DateTimeField()
    received_at = models.DateTimeField()

    class Meta:
        abstract = True
        ordering = ["-recorded_at"]

    def __str__(self) -> str:
        return f"{type(self).__name__} {self.idempotency_key}"


class TelemetryReading(Reading):
    battery = models.FloatField(null=True, blank=True)
    signal = models.FloatField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    connectivity = models.CharField(max_length=32, blank=True)

    class Meta(Reading.Meta):
        indexes = [models.Index(fields=["device", "recorded_at"])]


class GuardLocation(Reading):
    lat = models.FloatField()
    lon = models.FloatField()
    accuracy = models.FloatField(null=True, blank=True)
    inside_geofence = models.BooleanField(null=True)

    class Meta(Reading.Meta):
        indexes = [models.Index(fields=["device", "recorded_at"])]


class SensorReading(Reading):
    sensor_type = models.CharField(max_length=32)
    value = models.FloatField(null=True, blank=True)
    state = models.CharField(max_length=32, blank=True)

    class Meta(Reading.Meta):
        indexes = [models.Index(fields=["device", "recorded_at"])]


class SystemHealthSample(Reading):
    cpu = models.FloatField(null=True, blank=True)
    memory = models.FloatField(null=True, blank=True)
    disk = models.FloatField(null=True, blank=True)
    uptime = models.BigIntegerField(null=True, blank=True)

    class Meta(Reading.Meta):
        indexes = [models.Index(fields=["device", "recorded_at"])]


class CommandStatus(models.TextChoices):
    """A device command's states (the lifecycle and its mapping to AWS IoT Jobs and ThingsBoard
    RPC: docs/commands.md). QUEUED → SENT → DELIVERED → SUCCEEDED | FAILED; any of the first
    three → EXPIRED at its TTL; QUEUED → CANCELLED by an operator."""

    QUEUED = "QUEUED", "Queued"
    SENT = "SENT", "Sent (the broker took it)"
    DELIVERED = "DELIVERED", "Delivered (the device has it)"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"
    EXPIRED = "EXPIRED", "Expired"
    CANCELLED = "CANCELLED", "Cancelled"


class DeviceCommand(models.Model):
    """A command an operator sent to a device; its id is the `command_id` the device answers
    with (apps/devices/commands.py has its lifecycle)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    name = models.CharField(max_length=32)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=CommandStatus.choices, default=CommandStatus.QUEUED
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField()
    # When a worker last began to publish it: it may not be cancelled while that may be on the
    # wire, and the sweep sends it again only long after (apps/devices/commands.py).
    attempted_at = models.DateTimeField(null=True, blank=True)
    # When the worker's next try is due after a failed publish: the sweep leaves it to that try.
    retry_at = models.DateTimeField(null=True, blank=True)
    result_detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["device", "status"]),
            models.Index(fields=["status", "expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.name} to {self.device_id} ({self.status})"


class DeviceCommandTransition(models.Model):
    """One change of a command's state: who (empty for the system or the device), when, why."""

    command = models.ForeignKey(DeviceCommand, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=10, choices=CommandStatus.choices, blank=True)
    to_status = models.CharField(max_length=10, choices=CommandStatus.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.from_status or '—'} → {self.to_status}"
