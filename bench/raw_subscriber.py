"""The limit: a plain subscriber that only parses, with the client library of the real one.

    python -m bench.raw_subscriber --port 1883 --topic 'raw/#' --expect 20000

paho-mqtt, MQTT 5, a QoS 1 subscription with the subscriber's receive maximum, one
`json.loads` per message and nothing else; paho acknowledges each message once its callback
returns. Prints `ready` once the broker confirmed the subscription, then one JSON line when
`--expect` messages came (or at `--timeout`): how many and when the first and last arrived.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--receive-maximum", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    state: dict[str, Any] = {"received": 0, "unparsed": 0, "first": 0.0, "last": 0.0}

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            json.loads(message.payload)
        except ValueError:
            state["unparsed"] += 1
        now = time.monotonic()
        state["first"] = state["first"] or now
        state["last"] = now
        state["received"] += 1

    def on_subscribe(client: mqtt.Client, *args: Any) -> None:
        print("ready", flush=True)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{time.time_ns()}", protocol=mqtt.MQTTv5
    )
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = args.receive_maximum
    client.connect("127.0.0.1", args.port, properties=properties)
    client.subscribe(args.topic, qos=1)
    deadline = time.monotonic() + args.timeout
    while state["received"] < args.expect and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    for _ in range(10):  # let the last acknowledgements go out
        client.loop(timeout=0.01)
    client.disconnect()
    print(json.dumps(state), flush=True)


if __name__ == "__main__":
    main()
