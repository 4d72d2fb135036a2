"""The one way the application opens an MQTT client: MQTT 5, paho's v2 callbacks, our account.

Importing it also makes paho read a received packet's MQTT 5 properties faster (see
`ReceivedProperties`): the subscriber decodes one per message.
"""

from __future__ import annotations

import uuid
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def app_client(
    client_id: str | None = None, *, role: str = "app", manual_ack: bool = False
) -> mqtt.Client:
    """A client logged in as the application account (MQTT_USERNAME), not yet connected.

    Without a `client_id` it gets a unique one named after its `role` (`health-…`, `downlink-…`).
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{role}-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.MQTT_USERNAME:
        client.username_pw_set(settings.MQTT_USERNAME, settings.MQTT_PASSWORD)
    return client


# paho's own tables (property names, their types and packets), built once. They are read,
# never written, by every method of `Properties`.
_TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_OWN = ("packetType", "types", "names", "properties")  # what an instance holds but properties
_NONE = b"\x00"  # a property section of length 0: what devices send


class ReceivedProperties(Properties):
    """paho's `Properties` for the packets paho decodes (every received PUBLISH), without two
    costs of the original: each instance built its tables anew (two dicts and a list, about
    7 µs), and reading an empty property section scanned every property name twice (about
    5 µs). Together about 12 µs of the subscriber's 60 to 80 a message. A section that has
    properties is read by paho's own code, into the same attributes."""

    def __init__(self, packetType: int) -> None:
        set_own = object.__setattr__  # paho's __setattr__ checks each name against its tables
        set_own(self, "packetType", packetType)
        set_own(self, "types", _TABLES.types)
        set_own(self, "names", _TABLES.names)
        set_own(self, "properties", _TABLES.properties)

    def unpack(self, buffer: Any) -> tuple[Properties, int]:
        if buffer[:1] == _NONE and len(self.__dict__) == len(_OWN):  # none held, none to read
            return self, 1
        return super().unpack(buffer)  # type: ignore[no-untyped-call,no-any-return]


def _install() -> bool:
    """Have paho's packet decoder build `ReceivedProperties`; False (paho unchanged) if this
    paho's decoder is not the one measured."""
    if getattr(_packet, "Properties", None) is not Properties:
        return False
    _packet.Properties = ReceivedProperties  # type: ignore[attr-defined]
    return True


RECEIVED_PROPERTIES_INSTALLED = _install()
