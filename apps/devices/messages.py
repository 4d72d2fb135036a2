"""The device message contract: one typed model per MQTT payload kind, and the kinds of message
(MESSAGE_KINDS: the topic each is published on, its model, an example).

A payload is a JSON object validated by the model of its kind; unknown fields are ignored so
devices can send extra data without being rejected. Ingest's topic table (apps/mqtt/topics.py)
adds to each kind how it is processed; docs/messages.md is generated from both
(`manage.py message_formats --write`), and the REST API serves each kind's JSON Schema.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from apps.core.alert_types import DEVICE_ALERT_TYPES, AlertType, Severity
from apps.devices.commands import CommandResult

# "'PANIC', 'SOS', … or 'EQUIPMENT_FAILURE'", as pydantic words a choice of literals.
_DEVICE_ALERT_NAMES = " or ".join(
    [", ".join(f"'{name}'" for name in DEVICE_ALERT_TYPES[:-1]), f"'{DEVICE_ALERT_TYPES[-1]}'"]
)

# alert_type's JSON Schema: what a device may send, not every type an alert may have.
_DEVICE_ALERT_SCHEMA: Final = {
    "type": "string",
    "enum": list(DEVICE_ALERT_TYPES),
    "description": "In any case; the other alert types are raised by the system itself",
}

# What every store can hold: a signed 64-bit integer (PostgreSQL bigint, SQLite integer).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Percent = Annotated[float, Field(ge=0, le=100)]
MessageId = Annotated[str, Field(min_length=1, max_length=64)]
# Devices send numbers; "NaN" or "Infinity" as a string is not one any store or reader takes.
_FINITE: Final = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


# The short words devices send (connectivity, sensor type and state), compared in one case.
LABEL_LENGTH = 32


def _recased(value: str, case: Callable[[str], str]) -> str:
    """`value` in upper or lower case, still within its column: "ß".upper() is "SS"."""
    cased = case(value)
    if len(cased) > LABEL_LENGTH:
        raise ValueError(f"{len(cased)} characters in {case.__name__} case; at most {LABEL_LENGTH}")
    return cased


class DevicePayload(BaseModel):
    """Fields every payload may carry."""

    model_config = ConfigDict(**_FINITE, str_strip_whitespace=True)

    # The payload field naming the source, checked against the topic; subclasses override.
    source_field: ClassVar[str] = "device_id"

    timestamp: AwareDatetime = Field(
        description="When the device sent it: ISO 8601 with a zone (2026-12-01T09:30:00+05:30)"
    )
    msg_id: MessageId | None = Field(
        default=None, description="The device's id for the message: a resend carries the same"
    )
    device_id: str | None = Field(
        default=None, max_length=64, description="If given, the id in the topic"
    )

    @field_validator("timestamp")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # Devices send their local offset; everything downstream speaks UTC.
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00
            raise ValueError("timestamp is outside the years 1 to 9999 in UTC") from None

    def claimed_sources(self) -> dict[str, str]:
        """Every id the payload gives for its source (each must match the topic's). Asked of
        every message the subscriber takes in: two attribute reads, not a loop."""
        claimed: dict[str, str] = {}
        if self.device_id is not None:
            claimed["device_id"] = str(self.device_id)
        field = self.source_field
        if field != "device_id" and (value := getattr(self, field, None)) is not None:
            claimed[field] = str(value)
        return claimed


class TelemetryPayload(DevicePayload):
    battery: Percent | None = Field(default=None, description="Percent; low raises LOW_BATTERY")
    signal: float | None = Field(default=None, ge=-200, le=200, description="Signal strength")
    temperature: float | None = Field(default=None, ge=-100, le=200, description="°C")
    connectivity: str | None = Field(
        default=None, max_length=LABEL_LENGTH, description="e.g. wifi, lte; stored upper-cased"
    )

    @field_validator("connectivity")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value and _recased(value, str.upper)


class Location(BaseModel):
    model_config = _FINITE

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class GpsPayload(DevicePayload):
    source_field: ClassVar[str] = "guard_id"

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    accuracy: float | None = Field(default=None, ge=0, le=100_000, description="Metres")
    guard_id: str | None = Field(
        default=None, max_length=64, description="If given, the id in the topic"
    )


class SensorPayload(DevicePayload):
    source_field: ClassVar[str] = "sensor_id"

    type: str = Field(
        min_length=1,
        max_length=LABEL_LENGTH,
        description="What it senses, e.g. temperature, smoke, door; stored lower-cased",
    )
    value: float | None = Field(
        default=None, description="The reading; smoke above SMOKE_ALARM_THRESHOLD raises FIRE"
    )
    state: str | None = Field(
        default=None,
        max_length=LABEL_LENGTH,
        description="e.g. OPEN, FORCED (a door: INTRUSION); stored upper-cased",
    )
    sensor_id: str | None = Field(
        default=None, max_length=64, description="If given, the id in the topic"
    )

    @field_validator("type")
    @classmethod
    def _lower(cls, value: str) -> str:
        return _recased(value, str.lower)

    @field_validator("state")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value and _recased(value, str.upper)


class AlertPayload(DevicePayload):
    alert_type: Annotated[AlertType, WithJsonSchema(_DEVICE_ALERT_SCHEMA)]
    severity: Severity = Field(default=Severity.CRITICAL, description="In any case")
    message: str = Field(default="", max_length=2000, description="Shown to the operator")
    location: Location | None = Field(default=None, description="Where it happened")

    @field_validator("alert_type", "severity", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: ValidationInfo) -> Any:
        # Devices send "panic" / "critical"; a lower-case severity must never skip an alert.
        value = value.strip().upper() if isinstance(value, str) else value
        if info.field_name == "alert_type" and value not in DEVICE_ALERT_TYPES:
            # The types the system raises itself (OFFLINE, LOW_BATTERY …) are not a device's.
            raise PydanticCustomError("literal_error", f"Input should be {_DEVICE_ALERT_NAMES}")
        return value


class SystemHealthPayload(DevicePayload):
    cpu: Percent | None = Field(default=None, description="Percent in use")
    memory: Percent | None = Field(default=None, description="Percent in use")
    disk: Percent | None = Field(default=None, description="Percent in use")
    uptime: int | None = Field(default=None, ge=0, le=INT64_MAX, description="Seconds")


class CommandAckPayload(DevicePayload):
    """A device's answer to a command it was sent (apps/devices/commands.py)."""

    command_id: UUID = Field(description="The id of the command answered")
    result: CommandResult = Field(
        description="In any case: delivered (working on it), success or failure"
    )
    detail: str = Field(default="", max_length=1000, description="What happened, for the operator")

    @field_validator("command_id", mode="before")
    @classmethod
    def _uuid(cls, value: Any) -> Any:
        # pydantic's own message quotes the offending character, unprintable ones included.
        if isinstance(value, str):
            try:
                return UUID(value)
            except ValueError:
                raise PydanticCustomError(
                    "uuid_parsing", "Input should be the command's id, a UUID (8-4-4-4-12 hex)"
                ) from None
        return value

    @field_validator("result", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


# Where the documentation of each kind is, named by a refused message's dead letter.
MESSAGES_DOC = "docs/messages.md"
# The examples' time: intake accepts each when it arrives then (tests/mqtt/test_message_formats.py).
EXAMPLE_TIME = "2026-12-01T09:30:00+05:30"


@dataclass(frozen=True)
class MessageKind:
    """A kind of device message as a device's maker sees it. What ingest does with it (queue,
    consumer, which device kinds may send it) is its row in apps/mqtt/topics.py."""

    name: str  # Envelope.kind, the heading of its section in docs/messages.md
    prefix: str
    segments: frozenset[str] | None  # the accepted last segments; None: any (alert/<id>/fire …)
    schema: type[DevicePayload]
    # Sent regularly, so the device's silence means something (offline detection,
    # apps/mqtt/presence.py); the other kinds are events.
    heartbeat: bool
    example_topic: str
    # A payload intake accepts, sent at EXAMPLE_TIME (a dict: left out of the kind's hash).
    example: Mapping[str, Any] = field(hash=False)

    @property
    def topics(self) -> list[str]:
        """Its topic patterns: `guard/<id>/gps` and `guard/<id>/location`, `alert/<id>/<any>`."""
        return [f"{self.prefix}<id>/{last}" for last in sorted(self.segments or ["<any>"])]

    @property
    def documentation(self) -> str:
        return f"{MESSAGES_DOC}#{self.name}"

    def json_schema(self) -> dict[str, Any]:
        return json_schema_of(self.schema)


MESSAGE_KINDS: Final[tuple[MessageKind, ...]] = (
    MessageKind(
        name="alert",
        prefix="alert/",
        segments=None,
        schema=AlertPayload,
        heartbeat=False,
        example_topic="alert/panic-1/panic",
        example={
            "alert_type": "panic",
            "severity": "critical",
            "message": "lobby",
            "location": {"lat": 12.97, "lon": 77.59},
            "msg_id": "41",
            "timestamp": EXAMPLE_TIME,
        },
    ),
    MessageKind(
        name="gps",
        prefix="guard/",
        segments=frozenset({"gps", "location"}),
        schema=GpsPayload,
        heartbeat=False,
        example_topic="guard/guard-1/gps",
        example={"lat": 12.9716, "lon": 77.5946, "accuracy": 8.5, "timestamp": EXAMPLE_TIME},
    ),
    MessageKind(
        name="telemetry",
        prefix="device/",
        segments=frozenset({"telemetry"}),
        schema=TelemetryPayload,
        heartbeat=True,
        example_topic="device/device-1/telemetry",
        example={
            "battery": 87,
            "signal": -65,
            "temperature": 24.5,
            "connectivity": "wifi",
            "timestamp": EXAMPLE_TIME,
        },
    ),
    MessageKind(
        name="command_ack",
        prefix="device/",  # beside telemetry: kinds of one prefix differ by their segments
        segments=frozenset({"command_ack"}),
        schema=CommandAckPayload,
        heartbeat=False,
        example_topic="device/device-1/command_ack",
        example={
            "command_id": "0b7f8c1e-4c1a-4a8e-9d61-2f0c7c0b5e3a",
            "result": "success",
            "detail": "rebooted",
            "timestamp": EXAMPLE_TIME,
        },
    ),
    MessageKind(
        name="sensor",
        prefix="sensor/",
        segments=None,
        schema=SensorPayload,
        heartbeat=False,
        example_topic="sensor/sensor-1/temperature",
        example={"type": "temperature", "value": 21.5, "msg_id": "17", "timestamp": EXAMPLE_TIME},
    ),
    MessageKind(
        name="system_health",
        prefix="system/",
        segments=frozenset({"health"}),
        schema=SystemHealthPayload,
        heartbeat=True,
        example_topic="system/gateway-1/health",
        example={"cpu": 35.5, "memory": 61, "disk": 40, "uptime": 86400, "timestamp": EXAMPLE_TIME},
    ),
)
MESSAGE_KINDS_BY_NAME: Final = {kind.name: kind for kind in MESSAGE_KINDS}


@functools.cache
def json_schema_of(schema: type[DevicePayload]) -> dict[str, Any]:
    """The model's JSON Schema, built once (the REST API serves it); not to be changed."""
    return schema.model_json_schema()
