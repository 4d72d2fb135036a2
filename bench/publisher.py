"""One load-generator process: publish a file of messages at QoS 1, as fast as asked.

    python -m bench.publisher --port 1883 --client-id gen-0 --messages FILE [--rate 500]

FILE holds one `topic<TAB>payload` line per message. The process connects, prints `ready`,
waits for a `go` line on stdin, publishes every message (at `--rate` msg/s when given, else as
fast as the broker takes them, with at most `--window` unacknowledged), waits for the broker's
PUBACK of each, and prints one JSON line: how many were acknowledged and when (time.monotonic,
which is the same clock in every process of the machine).

It speaks MQTT 3.1.1 itself with packets encoded once before `go`, because paho spends about
0.3 ms of Python per QoS 1 publish here: as a generator it would be the bottleneck it must not
be. What it sends is plain MQTT, as any device sends it; the subscribers under test use paho.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

CONNACK, PUBACK = 0x20, 0x40


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int) -> bytes:
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive) + utf8(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = utf8(topic) + struct.pack("!H", packet_id) + payload
    return b"\x32" + remaining_length(len(body)) + body  # PUBLISH, QoS 1


class Publisher:
    def __init__(self, port: int, client_id: str, window: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.window = window
        self.buffer = b""
        self.acked = 0
        self.last_ack_at = 0.0
        self.sock.sendall(connect_packet(client_id, keepalive=0))
        packet_type, body = self._read_packet()
        if packet_type != CONNACK or body[1] != 0:
            raise SystemExit(f"broker refused the connection: {packet_type:#x} {body!r}")
        self.sock.setblocking(False)

    def _read_packet(self) -> tuple[int, bytes]:
        """One whole packet, blocking (only used for CONNACK)."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the broker closed the connection")
            self.buffer += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        if len(self.buffer) < 2:
            return None
        length, multiplier, index = 0, 1, 1
        while True:
            if index >= len(self.buffer):
                return None
            byte = self.buffer[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        if len(self.buffer) < index + length:
            return None
        packet = (self.buffer[0] & 0xF0, self.buffer[index : index + length])
        self.buffer = self.buffer[index + length :]
        return packet

    def pump(self, timeout: float) -> None:
        """Read what the broker sent (PUBACKs) within `timeout`."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise SystemExit("the broker closed the connection")
        self.buffer += chunk
        while (packet := self._parse()) is not None:
            if packet[0] == PUBACK:
                self.acked += 1
                self.last_ack_at = time.monotonic()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                self.pump(0.005)  # the broker is not reading: take its acks meanwhile
                continue
            view = view[sent:]

    def run(self, packets: list[bytes], rate: float | None, deadline: float) -> None:
        started = time.monotonic()
        sent = 0
        chunk = 1 if rate else 64
        while sent < len(packets):
            if time.monotonic() > deadline:
                break
            if rate:  # open loop: message n leaves at started + n / rate, whatever came before
                due = started + sent / rate
                wait = due - time.monotonic()
                if wait > 0:
                    self.pump(min(wait, 0.05))
                    continue
            if sent - self.acked >= self.window:
                self.pump(0.05)
                continue
            batch = packets[sent : sent + min(chunk, self.window - (sent - self.acked))]
            self.send(b"".join(batch))
            sent += len(batch)
            self.pump(0)
        while self.acked < sent and time.monotonic() < deadline:
            self.pump(0.05)
        self.sent = sent

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--messages", required=True, help="file of topic<TAB>payload lines")
    parser.add_argument("--rate", type=float, default=0.0, help="msg/s; 0: as fast as possible")
    parser.add_argument("--window", type=int, default=1000, help="most unacknowledged at once")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    packets = []
    with open(args.messages, encoding="utf-8") as lines:
        for n, line in enumerate(lines):
            topic, _, payload = line.rstrip("\n").partition("\t")
            packets.append(publish_packet(topic, payload.encode(), n % 65535 + 1))
    publisher = Publisher(args.port, args.client_id, min(args.window, 65535))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    started = time.monotonic()
    publisher.run(packets, args.rate or None, started + args.timeout)
    finished = time.monotonic()
    publisher.close()
    print(
        json.dumps(
            {
                "client_id": args.client_id,
                "messages": len(packets),
                "sent": publisher.sent,
                "acked": publisher.acked,
                "started": started,
                "finished": finished,
                "last_ack_at": publisher.last_ack_at,
                "cpu_seconds": time.process_time(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
