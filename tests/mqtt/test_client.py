"""The application's paho client (apps/mqtt/client.py): its connection's reads come from one
larger read (`BufferedReads`), a batch's acknowledgements leave in one write, and paho decodes a
received packet's MQTT 5 properties with `ReceivedProperties`: the same attributes as paho's
own `Properties`, in a fraction of the time for the empty property section devices send."""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from apps.mqtt import client as app_mqtt
from tests import environment
from tests.services import Service, wait_for


def publish_packet(topic: str, mid: int, properties: bytes, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH after its fixed header: what paho's decoder is given."""
    name = topic.encode()
    return struct.pack("!H", len(name)) + name + struct.pack("!H", mid) + properties + payload


@contextmanager
def pahos_own_properties() -> Iterator[None]:
    """paho's decoder as paho ships it, for the reference decode."""
    _packet.Properties = Properties  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _packet.Properties = app_mqtt.ReceivedProperties  # type: ignore[attr-defined]


def decoded(packet: bytes) -> tuple[Any, ...]:
    result = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
    return result.topic, result.mid, result.payload, result.properties.json()


def every_publish_property() -> bytes:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.PayloadFormatIndicator = 1
    properties.MessageExpiryInterval = 90
    properties.ContentType = "application/json"
    properties.ResponseTopic = "device/d-1/reply"
    properties.CorrelationData = b"\x00\x01corr"
    properties.SubscriptionIdentifier = 7
    properties.UserProperty = [("trace", "abc"), ("zone", "é")]
    return bytes(properties.pack())  # type: ignore[no-untyped-call]


def test_pahos_decoder_builds_the_fast_properties() -> None:
    assert app_mqtt.RECEIVED_PROPERTIES_INSTALLED  # this paho's decoder is the one measured
    packet = publish_packet("device/d-1/telemetry", 5, b"\x00", b"{}")
    assert type(_packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5).properties) is (
        app_mqtt.ReceivedProperties
    )


@pytest.mark.parametrize(
    "properties", [b"\x00", every_publish_property()], ids=["none", "every-publish-property"]
)
def test_a_publish_decodes_as_pahos_own_properties_decode_it(properties: bytes) -> None:
    packet = publish_packet("device/d-1/telemetry", 513, properties, b'{"battery": 80}')
    with pahos_own_properties():
        expected = decoded(packet)
    assert decoded(packet) == expected
    assert expected[2] == b'{"battery": 80}'  # the property section was skipped, not read as data
    if properties != b"\x00":
        assert expected[3]["UserProperty"] == [("trace", "abc"), ("zone", "é")]


def test_properties_read_into_an_instance_replace_what_it_held() -> None:
    properties = app_mqtt.ReceivedProperties(PacketTypes.PUBLISH)
    properties.unpack(every_publish_property())
    properties.unpack(b"\x00")
    assert properties.isEmpty()  # paho's unpack clears first; the fast path must not skip that


def test_a_message_with_properties_reaches_an_application_client(
    mosquitto_broker: Service,
) -> None:
    received: list[mqtt.MQTTMessage] = []
    topic = f"props-{uuid.uuid4().hex[:8]}/telemetry"
    subscriber = app_mqtt.app_client(role="test-props")
    subscriber.on_message = lambda client, userdata, message: received.append(message)
    subscriber.on_subscribe = lambda *args: received.append(None)  # type: ignore[arg-type]
    subscriber.connect("127.0.0.1", environment.MQTT_PORT)
    subscriber.subscribe(topic, qos=1)
    subscriber.loop_start()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        wait_for(lambda: received, timeout=10, what="the subscription")
        publisher.connect("127.0.0.1", environment.MQTT_PORT)
        publisher.loop_start()
        with_properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        with_properties.UserProperty = [("trace", "t-1")]
        with_properties.ContentType = "application/json"
        publisher.publish(topic, b'{"n": 1}', qos=1, properties=with_properties).wait_for_publish(5)
        publisher.publish(topic, b'{"n": 2}', qos=1).wait_for_publish(5)
        wait_for(lambda: len(received) == 3, timeout=10, what="both messages")
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        subscriber.loop_stop()
        subscriber.disconnect()
    first, second = received[1:]
    assert (first.payload, second.payload) == (b'{"n": 1}', b'{"n": 2}')
    assert first.properties.UserProperty == [("trace", "t-1")]
    assert first.properties.ContentType == "application/json"
    assert second.properties.isEmpty()


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Both ends of a TCP connection on loopback; the first non-blocking, as paho has it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    near.setblocking(False)
    with near, far:
        yield near, far


def test_small_reads_are_served_from_one_read_in_order(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    near, far = connection
    sent = bytes(range(256)) * 40  # 10,240 bytes, in one write
    far.sendall(sent)
    buffered = app_mqtt.BufferedReads(near)
    wait_for(lambda: select_readable(near), timeout=5, what="the bytes to arrive")
    pieces = [buffered.recv(1), buffered.recv(1), buffered.recv(300)]
    assert buffered.pending() == len(sent) - 302  # taken from the kernel, not yet by paho
    while buffered.pending():
        pieces.append(buffered.recv(2048))
    assert b"".join(pieces) == sent
    with pytest.raises(BlockingIOError):  # nothing buffered, nothing in the kernel
        buffered.recv(1)
    far.close()
    wait_for(lambda: select_readable(near), timeout=5, what="the close")
    assert buffered.recv(1) == b""  # the connection closed, as paho expects to learn it


def mqtt_packet(first: int, body: bytes) -> bytes:
    """A whole packet: its first byte, the remaining length (MQTT's variable-length integer)."""
    length, encoded = len(body), b""
    while True:
        length, digit = divmod(length, 128)
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            return bytes([first]) + encoded + body


def a_stream_of_every_kind_of_publish() -> tuple[bytes, int]:
    """Bytes a broker might send a subscriber, and how many messages they hold: QoS 0 and 1,
    DUP and RETAIN, no properties and every PUBLISH property, remaining lengths of one to
    three bytes, an empty payload, a PINGRESP between them; repeated past READ_SIZE, so that
    packets straddle the reads."""
    packets, messages = [], 0
    for n in range(60):
        topic = f"device/d-{n}/telemetry".encode()
        qos0 = struct.pack("!H", len(topic)) + topic
        for first, properties, payload in [
            (0x32, b"\x00", b'{"battery": 80}'),
            (0x30, b"\x00", b'{"n": %d}' % n),
            (0x3B, b"\x00", b"x" * 200),  # DUP, QoS 1, RETAIN; two bytes of length
            (0x32, every_publish_property(), b'{"with": "properties"}'),
            (0x32, b"\x00", b"y" * 20_000),  # three bytes of length
            (0x32, b"\x00", b""),
        ]:
            mid = struct.pack("!H", messages % 65535 + 1) if first & 0x06 else b""
            packets.append(mqtt_packet(first, qos0 + mid + properties + payload))
            messages += 1
        packets.append(b"\xd0\x00")  # PINGRESP
    stream = b"".join(packets)
    assert len(stream) > 10 * app_mqtt.READ_SIZE
    return stream, messages


def received_through(client: mqtt.Client, stream: bytes, count: int) -> list[tuple[Any, ...]]:
    """What `client` hands its message callback when a broker's connection brings `stream`."""
    received: list[tuple[Any, ...]] = []
    client.on_message = lambda _client, _userdata, m: received.append(
        (m.topic, m.payload, m.mid, m.qos, m.retain, m.dup, m.properties.json())
    )
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    near.setblocking(False)
    with near, far:
        client._sock = (
            app_mqtt.BufferedReads(near) if isinstance(client, app_mqtt.AppClient) else near
        )
        sender = threading.Thread(target=far.sendall, args=(stream,), daemon=True)
        sender.start()

        def read() -> bool:
            for _ in range(1000):  # then wait_for sleeps, and fails at its deadline
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS or len(received) >= count:
                    break
            return len(received) >= count

        wait_for(read, timeout=20, interval=0.01, what=f"{count} messages")
        sender.join(timeout=5)
        client._sock = None
    return received


def test_an_application_client_hands_on_every_publish_as_paho_does() -> None:
    stream, count = a_stream_of_every_kind_of_publish()
    pahos = received_through(
        mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True),
        stream,
        count,
    )
    client = app_mqtt.app_client(role="test-reads", manual_ack=True)
    fast: list[int] = []
    read_fast = client._handle_read_publish
    client._handle_read_publish = lambda *packet: fast.append(1) or read_fast(*packet)  # type: ignore[method-assign]
    ours = received_through(client, stream, count)
    assert len(pahos) == count
    assert ours == pahos
    # The fast path read most of them; paho those with properties and those cut by a read.
    assert count // 2 < len(fast) < count
    assert {(qos, retain, dup) for _t, _p, _m, qos, retain, dup, _pr in ours} == {
        (1, False, False),
        (0, False, False),
        (1, True, True),
    }


def test_only_a_whole_propertyless_publish_at_qos_0_or_1_is_read_from_the_buffer() -> None:
    reads = app_mqtt.BufferedReads(SimpleNamespace(send=None, fileno=None))  # never read
    topic = struct.pack("!H", 4) + b"a/bc"
    whole = mqtt_packet(0x32, topic + b"\x00\x07" + b"\x00" + b"{}")
    refused = [
        mqtt_packet(0x34, topic + b"\x00\x07" + b"\x00" + b"{}"),  # QoS 2: paho's exchange
        mqtt_packet(0x32, topic + b"\x00\x07" + b"\x03\x01\x01\x00" + b"{}"),  # properties
        mqtt_packet(0x36, topic + b"\x00\x07" + b"\x00" + b"{}"),  # QoS 3: no such QoS
        mqtt_packet(0x32, topic + b"\x00\x00" + b"\x00" + b"{}"),  # packet id 0: paho's
        mqtt_packet(0x32, struct.pack("!H", 40) + b"a/bc"),  # the topic runs past the packet
        mqtt_packet(0x32, struct.pack("!H", 40) + b"a/bc") + whole,  # … into the next one
        mqtt_packet(0x32, topic + b"\x00\x07"),  # no property length after the packet id
        mqtt_packet(0x30, topic),  # QoS 0, the topic ends the packet: no property length
        mqtt_packet(0x32, b"\x00\x00"),  # a remaining length under 3
        whole[:-1],  # not all read yet
        b"\x32\x80",  # the remaining length itself not all read yet
        b"\xd0\x00",  # a PINGRESP
        b"\x30\x83\x80\x80\x80\x00" + bytes(3),  # five bytes of remaining length (3)
    ]
    for data in refused:
        reads._data, reads._at = data, 0
        assert reads.next_publish() is None
        assert reads._at == 0  # nothing taken: paho reads it, and refuses what is malformed
    reads._data, reads._at = whole + whole, 0
    assert reads.next_publish() == (0x32, b"a/bc", 7, b"{}")
    assert reads._at == len(whole)


def select_readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_a_batch_of_acknowledgements_leaves_in_one_write_and_the_broker_forgets_those_messages(
    mosquitto_broker: Service,
) -> None:
    """`ack_all` acknowledges QoS 1 messages in one write; the broker keeps in the session, and
    redelivers on the next connection, exactly the messages it was not given."""
    topic = f"acks-{uuid.uuid4().hex[:8]}/telemetry"
    client_id = f"test-acks-{uuid.uuid4().hex[:8]}"
    first = Session(client_id, topic)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", environment.MQTT_PORT)
    publisher.loop_start()
    try:
        for n in range(60):
            publisher.publish(topic, f'{{"n": {n}}}'.encode(), qos=1).wait_for_publish(5)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    wait_for(lambda: first.pump() == 60, timeout=10, what="60 messages")
    acked = [message.mid for message in first.received[:50]]
    writes: list[bytes] = []
    sock = first.client.socket()
    sock.send = lambda data: writes.append(bytes(data)) or first.send(data)  # type: ignore[union-attr]
    first.client.ack_all(acked)
    assert writes == [b"".join(struct.pack("!BBH", 0x40, 2, mid) for mid in acked)]
    first.round_trip()  # the broker reads in order: once it answers, it has read the acks
    first.close()

    again = Session(client_id, topic)  # the same session: what the broker still holds
    try:
        wait_for(lambda: again.pump() == 10, timeout=3, what="the unacknowledged 10")
        assert [message.payload for message in again.received] == [
            f'{{"n": {n}}}'.encode() for n in range(50, 60)
        ]
    finally:
        again.close(end_session=True)


class Session:
    """An application client with manual acknowledgement on a persistent session, holding what
    it received; its loop run by `pump`, in the caller's thread, as the subscriber runs it."""

    def __init__(self, client_id: str, topic: str) -> None:
        self.received: list[mqtt.MQTTMessage] = []
        self.client = app_mqtt.app_client(client_id, manual_ack=True)
        self.client.on_message = lambda client, userdata, message: self.received.append(message)
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = 300
        self.client.connect(
            "127.0.0.1", environment.MQTT_PORT, clean_start=False, properties=connect
        )
        self.subscribed: list[bool] = []
        self.client.on_subscribe = lambda *args: self.subscribed.append(True)
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: self.pump() is not None and self.subscribed, timeout=10, what="SUBACK")
        self.send = self.client.socket().send  # type: ignore[union-attr]

    def round_trip(self) -> None:
        before = len(self.subscribed)
        self.client.subscribe(f"acks-{uuid.uuid4().hex[:8]}/none", qos=1)
        wait_for(lambda: self.pump() is not None and len(self.subscribed) > before, timeout=10)

    def pump(self) -> int:
        """One turn of the client's loop; how many messages it has received."""
        self.client.loop(timeout=0.05)
        return len(self.received)

    def close(self, *, end_session: bool = False) -> None:
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0 if end_session else 300
        self.client.disconnect(properties=properties)
        self.client.loop(timeout=0.05)


def test_an_application_clients_connection_is_buffered(mosquitto_broker: Service) -> None:
    client = app_mqtt.app_client(role="test-buffered")
    client.connect("127.0.0.1", environment.MQTT_PORT)
    try:
        assert isinstance(client.socket(), app_mqtt.BufferedReads)
    finally:
        client.disconnect()
