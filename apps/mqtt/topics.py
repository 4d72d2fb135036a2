"""The topic table: one row per kind of device message, and the topic grammar.

Topics look like `<prefix><source_id>/<segment>`, e.g. `device/sensor-001/telemetry`. Each row
takes a kind of device message from the contract (apps/devices/messages.py: prefix, segments,
the payload schema intake validates, heartbeat or event, an example) and adds how ingest
processes it: the consumer that applies it, the Celery task (whose queue and priority are in
apps/core/tasks/celery_settings.py), whether the subscriber sends it at once or in batches, and
the kind an auto-registered device gets, and which kinds of device may publish it. The
subscriber's ALLOWED_TOPIC_PREFIXES, the Mosquitto ACL, admission, auto-registration and the
processing tasks are all read from here; adding a topic kind is a message kind and its schema
in the contract, a row here and a consumer (docs/architecture.md, "Adding a topic kind").

What a device may publish follows from its kind (Device.Kind): the broker's ACL lets it write
only under the prefixes of the rows whose `published_by` names its kind; admission checks that
again, and refuses an alert its kind may not raise (ALERTS_BY_DEVICE_KIND), whether sent on
alert/ or raised by a sensor reading (a smoke reading raises FIRE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from apps.alerts.models import AlertType
from apps.core.tasks.celery_settings import (
    PROCESS_COMMAND_ACKS,
    PROCESS_DEVICE_ALERTS,
    PROCESS_DEVICE_TELEMETRY,
    PROCESS_GUARD_GPS,
    PROCESS_SENSOR_READINGS,
    PROCESS_SYSTEM_HEALTH,
)
from apps.devices import messages
from apps.devices.messages import DevicePayload, MessageKind
from apps.devices.models import DEVICE_ID_RULE, Device, is_device_id, word_pattern, word_rule
from apps.mqtt.consumers import alerts, command_ack, gps, sensor, system_health, telemetry
from apps.mqtt.consumers.base import Consumer

MAX_SEGMENT = 32
# The last level is a word, like a device id: it stands in the idempotency key and the logs.
SEGMENT_PATTERN = word_pattern(MAX_SEGMENT)
SEGMENT_RULE = word_rule(MAX_SEGMENT)

# The alerts a device of each kind may raise about itself. Every device may report its own
# equipment failure; the others only the kinds made to detect them (a guard's tracker has an SOS
# button). The system's own types (OFFLINE, LOW_BATTERY …) no device may send at all.
ALERTS_BY_DEVICE_KIND: Final[Mapping[str, frozenset[AlertType]]] = {
    Device.Kind.SENSOR: frozenset({AlertType.EQUIPMENT_FAILURE}),
    Device.Kind.PANIC_BUTTON: frozenset(
        {AlertType.PANIC, AlertType.SOS, AlertType.MEDICAL, AlertType.EQUIPMENT_FAILURE}
    ),
    Device.Kind.GPS_TRACKER: frozenset(
        {AlertType.PANIC, AlertType.SOS, AlertType.MEDICAL, AlertType.EQUIPMENT_FAILURE}
    ),
    Device.Kind.GATEWAY: frozenset({AlertType.EQUIPMENT_FAILURE}),
    Device.Kind.DOOR: frozenset({AlertType.INTRUSION, AlertType.EQUIPMENT_FAILURE}),
    Device.Kind.SMOKE: frozenset({AlertType.FIRE, AlertType.EQUIPMENT_FAILURE}),
    Device.Kind.CAMERA: frozenset({AlertType.INTRUSION, AlertType.EQUIPMENT_FAILURE}),
    Device.Kind.OTHER: frozenset({AlertType.EQUIPMENT_FAILURE}),
}


def no_alert(payload: DevicePayload) -> AlertType | None:
    return None


@dataclass(frozen=True)
class TopicKind:
    message: MessageKind  # topic, schema, example: the contract (apps/devices/messages.py)
    consumer: Consumer
    task: str
    immediate: bool  # sent to Celery the moment it arrives, not batched
    registers_as: Device.Kind  # the kind DEVICE_AUTO_REGISTER gives a device first heard here
    published_by: frozenset[str]  # the kinds of device that may publish here (ACL, admission)
    # The alert a message raises, checked against ALERTS_BY_DEVICE_KIND at admission.
    alert_raised: Callable[[DevicePayload], AlertType | None] = no_alert

    # The contract's fields, copied: intake reads them for every message.
    name: str = field(init=False)  # Envelope.kind and the `kind` label of the bus metrics
    prefix: str = field(init=False)
    segments: frozenset[str] | None = field(init=False)
    schema: type[DevicePayload] = field(init=False)
    heartbeat: bool = field(init=False)

    def __post_init__(self) -> None:
        for name in ("name", "prefix", "segments", "schema", "heartbeat"):
            object.__setattr__(self, name, getattr(self.message, name))

    def refusal(self, device_kind: str, message: DevicePayload) -> str | None:
        """Why a device of `device_kind` may not publish `message` here; None when it may."""
        if device_kind not in self.published_by:
            allowed = ", ".join(prefixes_for(device_kind)) or "nothing"
            return (
                f"may not publish under {self.prefix} (a {device_kind} may publish under {allowed})"
            )
        alert = self.alert_raised(message)
        may_raise = ALERTS_BY_DEVICE_KIND.get(device_kind, frozenset())
        if alert is not None and alert not in may_raise:
            allowed = ", ".join(sorted(may_raise)) or "none"
            return f"may not raise {alert} alerts (a {device_kind} may raise {allowed})"
        return None


EVERY_KIND: Final = frozenset(Device.Kind)

TOPIC_KINDS: Final[tuple[TopicKind, ...]] = (
    TopicKind(
        message=messages.MESSAGE_KINDS_BY_NAME["alert"],
        consumer=alerts.process,
        task=PROCESS_DEVICE_ALERTS,
        immediate=True,
        registers_as=Device.Kind.PANIC_BUTTON,
        published_by=EVERY_KIND,  # an equipment failure at least; the rest by kind
        alert_raised=alerts.alert_raised,
    ),
    TopicKind(
        message=messages.MESSAGE_KINDS_BY_NAME["gps"],
        consumer=gps.process,
        task=PROCESS_GUARD_GPS,
        immediate=False,
        registers_as=Device.Kind.GPS_TRACKER,
        published_by=frozenset({Device.Kind.GPS_TRACKER}),
    ),
    TopicKind(
        message=messages.MESSAGE_KINDS_BY_NAME["telemetry"],
        consumer=telemetry.process,
        task=PROCESS_DEVICE_TELEMETRY,
        immediate=False,
        registers_as=Device.Kind.OTHER,
        published_by=EVERY_KIND,
    ),
    TopicKind(
        message=messages.MESSAGE_KINDS_BY_NAME["command_ack"],
        consumer=command_ack.process,
        task=PROCESS_COMMAND_ACKS,
        immediate=False,
        registers_as=Device.Kind.OTHER,
        published_by=EVERY_KIND,
    ),
    TopicKind(
        message=messages.MESSAGE_KINDS_BY_NAME["sensor"],
        consumer=sensor.process,
        task=PROCESS_SENSOR_READINGS,
        immediate=False,
        registers_as=Device.Kind.SENSOR,
        published_by=frozenset(
            {Device.Kind.SENSOR, Device.Kind.DOOR, Device.Kind.SMOKE, Device.Kind.CAMERA}
        ),
        alert_raised=sensor.alert_raised,
    ),
    TopicKind(
        message=messages.MESSAGE_KINDS_BY_NAME["system_health"],
        consumer=system_health.process,
        task=PROCESS_SYSTEM_HEALTH,
        immediate=False,
        registers_as=Device.Kind.GATEWAY,
        published_by=frozenset({Device.Kind.GATEWAY, Device.Kind.CAMERA}),
    ),
)
KINDS_BY_NAME: Final = {kind.name: kind for kind in TOPIC_KINDS}
if list(KINDS_BY_NAME) != list(messages.MESSAGE_KINDS_BY_NAME):
    raise ValueError("each kind of device message (apps/devices/messages.py) needs one row here")
# Each prefix's rows, in table order. The subscriber subscribes per prefix (`<prefix>#`), so the
# rows of one prefix must be read by the same lane, and only one of them may take any segment.
KINDS_BY_PREFIX: Final[dict[str, tuple[TopicKind, ...]]] = {
    prefix: tuple(kind for kind in TOPIC_KINDS if kind.prefix == prefix)
    for prefix in dict.fromkeys(kind.prefix for kind in TOPIC_KINDS)
}
for _prefix, _kinds in KINDS_BY_PREFIX.items():
    if len({kind.immediate for kind in _kinds}) > 1:
        raise ValueError(f"the rows of {_prefix} must all be immediate or none: one subscription")
    if len(_kinds) > 1 and any(kind.segments is None for kind in _kinds):
        raise ValueError(f"a row of {_prefix}, shared with others, must name its segments")


def prefixes_for(device_kind: str) -> list[str]:
    """The prefixes a device of this kind may publish under (its ACL), each once."""
    kinds = [kind.prefix for kind in TOPIC_KINDS if device_kind in kind.published_by]
    return list(dict.fromkeys(kinds))


@dataclass(frozen=True)
class ParsedTopic:
    source_id: str
    segment: str
    kind: TopicKind


class TopicError(ValueError):
    pass


def parse_topic(topic: str) -> ParsedTopic:
    prefix = next((p for p in KINDS_BY_PREFIX if topic.startswith(p)), None)
    if prefix is None:
        allowed = ", ".join(KINDS_BY_PREFIX)
        raise TopicError(f"prefix not allowed (allowed: {allowed})")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not parts[1]:
        raise TopicError(f"topic must look like {prefix}<source_id>/<kind>")
    source_id, segment = parts
    if len(segment) > MAX_SEGMENT:
        raise TopicError(f"kind segment longer than {MAX_SEGMENT} characters")
    if not SEGMENT_PATTERN.fullmatch(segment):
        raise TopicError(f"kind segment must be {SEGMENT_RULE}")
    if not is_device_id(source_id):
        raise TopicError(f"source id must be {DEVICE_ID_RULE}")
    rows = KINDS_BY_PREFIX[prefix]
    kind = next((k for k in rows if k.segments is None or segment in k.segments), None)
    if kind is None:
        expected = " or ".join(sorted(s for k in rows for s in k.segments or ()))
        raise TopicError(f"kind segment {segment!r} not accepted under {prefix}; use {expected}")
    return ParsedTopic(source_id, segment, kind)
