"""The messages a NOC client may send, one typed model each."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from apps.alerts.models import Severity


class _ClientMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Filters(_ClientMessage):
    site: str | None = Field(default=None, max_length=100)
    severity: list[Severity] | None = None
    device: str | None = Field(default=None, max_length=64)


class Subscribe(_ClientMessage):
    type: Literal["subscribe"]
    filters: Filters = Filters()


class Unsubscribe(_ClientMessage):
    type: Literal["unsubscribe"]


class AcknowledgeAlert(_ClientMessage):
    type: Literal["acknowledge_alert"]
    alert_id: int
    note: str = Field(default="", max_length=1000)


class ResolveAlert(_ClientMessage):
    type: Literal["resolve_alert"]
    alert_id: int
    note: str = Field(default="", max_length=1000)


class SendCommand(_ClientMessage):
    """A command to one of the tenant's devices; its rules: apps/devices/commands.py."""

    type: Literal["send_command"]
    device_id: str = Field(max_length=64)
    command: str = Field(max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_seconds: int | None = None


class CancelCommand(_ClientMessage):
    type: Literal["cancel_command"]
    command_id: UUID


class Heartbeat(_ClientMessage):
    type: Literal["heartbeat"]


class Ack(_ClientMessage):
    """The client has handled every message up to `seq`; the server holds only what follows."""

    type: Literal["ack"]
    seq: int = Field(ge=0)


ClientMessage = Annotated[
    Subscribe
    | Unsubscribe
    | AcknowledgeAlert
    | ResolveAlert
    | SendCommand
    | CancelCommand
    | Heartbeat
    | Ack,
    Field(discriminator="type"),
]
client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
