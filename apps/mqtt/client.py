"""The one way the application opens an MQTT client: MQTT 5, paho's v2 callbacks, our account.

Four costs paho pays per received message are cut here, for the subscriber's sake: its reads
of a packet a byte or two at a time each went to the kernel (`BufferedReads`), each packet's
MQTT 5 properties were read with tables built anew (`ReceivedProperties`, installed into
paho's decoder on import), each PUBLISH was read field by field through a state machine
(`AppClient._packet_read` frames the ones devices send from the buffered bytes), and each
acknowledgement was queued and written on its own (`AppClient.ack_all` writes a batch's at
once).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Any, cast

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def app_client(
    client_id: str | None = None, *, role: str = "app", manual_ack: bool = False
) -> AppClient:
    """A client logged in as the application account (MQTT_USERNAME), not yet connected.

    Without a `client_id` it gets a unique one named after its `role` (`health-…`, `downlink-…`).
    """
    client = AppClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{role}-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.MQTT_USERNAME:
        client.username_pw_set(settings.MQTT_USERNAME, settings.MQTT_PASSWORD)
    return client


# What one read of a connection asks the kernel for: a burst of telemetry (about 250 messages of
# 250 bytes), as Mosquitto writes it.
READ_SIZE = 65536
_PUBLISH = 3  # a PUBLISH packet's type: the high four bits of its first byte


class BufferedReads:
    """A connected socket (TCP or TLS) whose reads come from one larger read of the kernel's
    buffer. paho reads a packet in three or more calls (its first byte, each byte of its length,
    the rest): a system call each, about a tenth of the subscriber's CPU. Everything but `recv`
    and `pending` is the socket's own (`send` and `fileno`, called per packet and per wait,
    bound once).

    `pending()` counts the bytes read and not yet taken, as an SSL socket's counts those
    decrypted: select() cannot see them, so a loop must not wait on the socket while there are
    any (paho's `loop()` and the subscriber's own check it)."""

    __slots__ = ("_at", "_data", "_sock", "fileno", "send")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._at = 0
        self.send = sock.send
        self.fileno = sock.fileno

    def recv(self, size: int) -> bytes:
        at, data = self._at, self._data
        if at >= len(data):
            data = self._sock.recv(max(size, READ_SIZE))  # BlockingIOError, errors: paho's
            if len(data) <= size:  # all of it asked for, or b"": the connection closed
                return cast(bytes, data)
            self._data, at = data, 0
        end = min(at + size, len(data))
        self._at = end
        return data[at:end]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._data) - self._at + (inner() if inner is not None else 0)

    def next_publish(self) -> tuple[int, bytes, int, bytes] | None:
        """Take the next packet from the bytes read, if it is a whole MQTT 5 PUBLISH at QoS 0
        or 1 without properties, as devices send them: (its first byte, topic, packet id,
        payload). Else None, and nothing taken: paho reads it as it reads any (another kind of
        packet, one with properties, one not all read yet, one that does not add up, or a QoS 1
        packet id of 0, which paho delivers)."""
        data, at = self._data, self._at
        end = len(data)
        if at >= end:
            return None
        first = data[at]
        qos = (first >> 1) & 3
        if first >> 4 != _PUBLISH or qos > 1:
            return None
        length, shift, i = 0, 0, at + 1
        while True:  # the remaining length: seven bits a byte, at most four bytes
            if i >= end or shift > 21:
                return None
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        packet_end = i + length
        if packet_end > end or length < 3:
            return None
        topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
        properties = topic_end + 2 * qos  # after the packet id, at QoS 1
        if properties >= packet_end or data[properties] != 0:
            return None  # properties to read (their length is not 0), or malformed
        mid = (data[topic_end] << 8) | data[topic_end + 1] if qos else 0
        if qos and mid == 0:
            return None  # not a packet id MQTT allows: left to paho, as before
        self._at = packet_end
        return first, data[i + 2 : topic_end], mid, data[properties + 1 : packet_end]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# A PUBACK with reason code 0 and no properties, as paho writes it (MQTT 3.1.1 and 5 alike):
# its type, remaining length 2, the packet id.
_PUBACK = struct.Struct("!BBH")


class AppClient(mqtt.Client):
    """paho's client with its connection's reads buffered (`BufferedReads`), the PUBLISH
    packets devices send read straight from that buffer (`_packet_read`), and a batch's
    acknowledgements written at once (`ack_all`)."""

    def _create_socket(self) -> Any:
        return BufferedReads(super()._create_socket())

    def _packet_read(self) -> MQTTErrorCode:
        """paho's, but a whole QoS 0 or 1 PUBLISH without properties that is read already
        (`BufferedReads.next_publish`) goes to the callbacks as paho's `_handle_publish` sends
        it, without paho's reading of it field by field: its fixed header a byte at a time,
        a dict of state and struct formats built per packet, a debug line formatted for
        nobody. paho spent about 15 µs a message there, a third of the subscriber's CPU
        (docs/performance.md). Any other packet, or one not all read yet, is paho's, and every
        packet is while paho's log is on (`enable_logger`, `on_log`), so its "Received PUBLISH"
        lines stay. One difference: a callback that raises has had its packet taken, so the
        packet is not read again (paho would read it again); unacknowledged, it comes back on
        the next connection."""
        sock = self._sock
        if (
            type(sock) is BufferedReads
            and self._in_packet["command"] == 0
            and self._protocol == mqtt.MQTTv5
            and self._logger is None
            and self._on_log is None
        ):
            publish = sock.next_publish()
            if publish is not None:
                return self._handle_read_publish(*publish)
        return super()._packet_read()

    def _handle_read_publish(
        self, first: int, topic: bytes, mid: int, payload: bytes
    ) -> MQTTErrorCode:
        """What paho's `_handle_publish` and the end of its `_packet_read` do with such a
        packet."""
        message = mqtt.MQTTMessage(mid, topic)
        message.dup = bool(first & 0x08)
        message.qos = (first >> 1) & 3
        message.retain = bool(first & 0x01)
        message.properties = ReceivedProperties(PacketTypes.PUBLISH)  # none: as paho decodes it
        message.payload = payload
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if message.qos == 1 and not self._manual_ack:
            rc = self._send_puback(mid)
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return rc

    def ack_all(self, mids: Sequence[int]) -> None:
        """`ack(mid, 1)` for each of `mids`, QoS 1 messages received with `manual_ack`, in one
        write. paho's `ack` queues each acknowledgement as a packet of its own and writes it
        at once: five calls and a system call per message, about a tenth of the subscriber's
        CPU (docs/performance.md). The bytes are the same, in the same order."""
        if not mids or not self._manual_ack:  # without manual_ack paho has acknowledged them
            return
        packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids])
        self._packet_queue(mqtt.PUBACK, packet, 0, 0)  # what paho's `ack` ends in, once


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
