"""One typed model per MQTT payload kind (which topic carries which: apps/mqtt/topics.py).

A payload is a JSON object validated by the model of its kind; unknown fields are ignored so
devices can send extra data without being rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from apps.alerts.models import DEVICE_ALERT_TYPES, AlertType, Severity
from apps.devices.commands import CommandResult

# "'PANIC', 'SOS', … or 'EQUIPMENT_FAILURE'", as pydantic words a choice of literals.
_DEVICE_ALERT_NAMES = " or ".join(
    [", ".join(f"'{name}'" for name in DEVICE_ALERT_TYPES[:-1]), f"'{DEVICE_ALERT_TYPES[-1]}'"]
)

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

    timestamp: AwareDatetime
    msg_id: MessageId | None = None
    device_id: str | None = Field(default=None, max_length=64)

    @field_validator("timestamp")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # Devices send their local offset; everything downstream speaks UTC.
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00
            raise ValueError("timestamp is outside the years 1 to 9999 in UTC") from None

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
    connectivity: str | None = Field(default=None, max_length=LABEL_LENGTH)

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
    accuracy: float | None = Field(default=None, ge=0, le=100_000)
    guard_id: str | None = Field(default=None, max_length=64)


class SensorPayload(DevicePayload):
    source_field: ClassVar[str] = "sensor_id"

    type: str = Field(min_length=1, max_length=LABEL_LENGTH)
    value: float | None = None
    state: str | None = Field(default=None, max_length=LABEL_LENGTH)
    sensor_id: str | None = Field(default=None, max_length=64)

    @field_validator("type")
    @classmethod
    def _lower(cls, value: str) -> str:
        return _recased(value, str.lower)

    @field_validator("state")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value and _recased(value, str.upper)


class AlertPayload(DevicePayload):
    alert_type: AlertType
    severity: Severity = Severity.CRITICAL
    message: str = Field(default="", max_length=2000)
    location: Location | None = None

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
    cpu: Percent | None = None
    memory: Percent | None = None
    disk: Percent | None = None
    uptime: int | None = Field(default=None, ge=0, le=INT64_MAX)


class CommandAckPayload(DevicePayload):
    """A device's answer to a command it was sent (apps/devices/commands.py)."""

    command_id: UUID
    result: CommandResult
    detail: str = Field(default="", max_length=1000)

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
