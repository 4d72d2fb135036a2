"""One typed model per MQTT payload kind, and the topic grammar.

Topics look like `<prefix><source_id>/<kind>`, e.g. `device/sensor-001/telemetry`. A payload
is a JSON object validated by the model of its kind; unknown fields are ignored so devices can
send extra data without being rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

MAX_KIND_SEGMENT = 32
SOURCE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

Percent = Annotated[float, Field(ge=0, le=100)]
MessageId = Annotated[str, Field(min_length=1, max_length=64)]


class DevicePayload(BaseModel):
    """Fields every payload may carry."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    # The payload field naming the source, checked against the topic; subclasses override.
    source_field: ClassVar[str] = "device_id"

    timestamp: AwareDatetime
    msg_id: MessageId | None = None
    device_id: str | None = Field(default=None, max_length=64)

    @field_validator("timestamp")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # Devices send their local offset; everything downstream speaks UTC.
        return value.astimezone(UTC)

    def claimed_sources(self) -> dict[str, str]:
        """Every id the payload gives for its source (each must match the topic's)."""
        fields = ("device_id", self.source_field)
        return {
            name: str(value)
            for name in dict.fromkeys(fields)
            if (value := getattr(self, name, None)) is not None
        }


class TelemetryPayload(DevicePayload):
    battery: Percent | None = None
    signal: float | None = Field(default=None, ge=-200, le=200)
    temperature: float | None = Field(default=None, ge=-100, le=200)
    connectivity: str | None = Field(default=None, max_length=32)

    @field_validator("connectivity")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value


class Location(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class GpsPayload(DevicePayload):
    source_field: ClassVar[str] = "guard_id"

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    accuracy: float | None = Field(default=None, ge=0, le=100_000)
    guard_id: str | None = Field(default=None, max_length=64)


class SensorPayload(DevicePayload):
    source_field: ClassVar[str] = "sensor_id"

    type: str = Field(min_length=1, max_length=32)
    value: float | None = None
    state: str | None = Field(default=None, max_length=32)
    sensor_id: str | None = Field(default=None, max_length=64)

    @field_validator("type")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("state")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value


AlertKind = Literal["PANIC", "SOS", "INTRUSION", "FIRE", "MEDICAL", "EQUIPMENT_FAILURE"]
SeverityName = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW"]


class AlertPayload(DevicePayload):
    alert_type: AlertKind
    severity: SeverityName = "CRITICAL"
    message: str = Field(default="", max_length=2000)
    location: Location | None = None

    @field_validator("alert_type", "severity", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any) -> Any:
        # Devices send "panic" / "critical"; a lower-case severity must never skip an alert.
        return value.strip().upper() if isinstance(value, str) else value


class SystemHealthPayload(DevicePayload):
    cpu: Percent | None = None
    memory: Percent | None = None
    disk: Percent | None = None
    uptime: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class TopicKind:
    """What a topic prefix carries: its name, its payload model and the accepted kind segments."""

    name: str
    model: type[DevicePayload]
    kinds: frozenset[str] | None  # None: any kind segment (alert/<id>/panic, alert/<id>/fire …)


TOPIC_KINDS: dict[str, TopicKind] = {
    "device/": TopicKind("telemetry", TelemetryPayload, frozenset({"telemetry"})),
    "guard/": TopicKind("gps", GpsPayload, frozenset({"gps", "location"})),
    "sensor/": TopicKind("sensor", SensorPayload, None),
    "alert/": TopicKind("alert", AlertPayload, None),
    "system/": TopicKind("system_health", SystemHealthPayload, frozenset({"health"})),
}


@dataclass(frozen=True)
class ParsedTopic:
    prefix: str
    source_id: str
    kind_segment: str
    kind: TopicKind


class TopicError(ValueError):
    pass


def parse_topic(topic: str) -> ParsedTopic:
    prefix = next((p for p in TOPIC_KINDS if topic.startswith(p)), None)
    if prefix is None:
        allowed = ", ".join(TOPIC_KINDS)
        raise TopicError(f"prefix not allowed (allowed: {allowed})")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not parts[1]:
        raise TopicError(f"topic must look like {prefix}<source_id>/<kind>")
    source_id, kind_segment = parts
    if len(kind_segment) > MAX_KIND_SEGMENT:
        raise TopicError(f"kind segment longer than {MAX_KIND_SEGMENT} characters")
    if not SOURCE_ID_PATTERN.match(source_id):
        raise TopicError("source id must be 1-64 characters of letters, digits, _ . : -")
    kind = TOPIC_KINDS[prefix]
    if kind.kinds is not None and kind_segment not in kind.kinds:
        expected = " or ".join(sorted(kind.kinds))
        raise TopicError(
            f"kind segment {kind_segment!r} not accepted under {prefix}; use {expected}"
        )
    return ParsedTopic(prefix, source_id, kind_segment, kind)
