"""The MQTT subscriber: the bus's front door.

It holds one persistent MQTT 5 session (fixed client id, clean start off, session expiry), so
QoS 1 messages published while it is down are delivered when it comes back. Run it with
`python manage.py mqtt_subscriber` (what `make run` and `mqtt-subscriber.service` do).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from apps.core.redis_client import state_redis
from apps.mqtt import status

log = structlog.get_logger(__name__)

# Topic prefix -> subscription QoS. Only topics under these prefixes are accepted.
ALLOWED_TOPIC_PREFIXES: dict[str, int] = {
    "device/": 1,
    "guard/": 1,
    "sensor/": 1,
    "alert/": 1,
    "system/": 1,
}


@dataclass(frozen=True)
class SubscriberConfig:
    host: str
    port: int
    client_id: str
    session_expiry: int
    keepalive: int
    shared_group: str
    username: str
    password: str
    reconnect_max_delay: int

    @classmethod
    def from_settings(cls) -> SubscriberConfig:
        return cls(
            host=settings.MQTT_HOST,
            port=settings.MQTT_PORT,
            client_id=settings.MQTT_CLIENT_ID,
            session_expiry=settings.MQTT_SESSION_EXPIRY,
            keepalive=settings.MQTT_KEEPALIVE,
            shared_group=settings.MQTT_SHARED_GROUP,
            username=settings.MQTT_USERNAME,
            password=settings.MQTT_PASSWORD,
            reconnect_max_delay=settings.MQTT_RECONNECT_MAX_DELAY,
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        filters = [(f"{prefix}#", qos) for prefix, qos in ALLOWED_TOPIC_PREFIXES.items()]
        if self.shared_group:
            return [(f"$share/{self.shared_group}/{topic}", qos) for topic, qos in filters]
        return filters


class Subscriber:
    def __init__(self, config: SubscriberConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.last_message_at: float | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.username:
            self.client.username_pw_set(config.username, config.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max_delay)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- paho callbacks (run on paho's network thread) ----------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "MQTT broker refused the connection",
                reason=str(reason_code),
                host=self.config.host,
                port=self.config.port,
                hint="check MQTT_USERNAME / MQTT_PASSWORD and the broker's ACL",
            )
            return
        log.info(
            "Connected to MQTT Broker",
            host=self.config.host,
            port=self.config.port,
            client_id=self.config.client_id,
            session_present=flags.session_present,
        )
        client.subscribe(self.config.subscriptions())
        self._report()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.stopping.is_set():
            log.warning(
                "Disconnected from MQTT Broker; reconnecting with backoff",
                reason=str(reason_code),
            )
        self._report()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.last_message_at = time.time()
        log.info("MQTT message received", topic=message.topic, bytes=len(message.payload))
        client.ack(message.mid, message.qos)

    # --- main loop ----------------------------------------------------------------------

    def _report(self) -> None:
        try:
            status.write_status(
                state_redis(),
                self.config.client_id,
                connected=self.client.is_connected() and not self.stopping.is_set(),
                last_message_at=self.last_message_at,
            )
        except Exception as exc:
            log.warning("could not record subscriber status in Redis", error=str(exc))

    def run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry
        log.info(
            "MQTT subscriber starting",
            host=self.config.host,
            port=self.config.port,
            client_id=self.config.client_id,
        )
        self.client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        try:
            while not self.stopping.wait(status.HEARTBEAT_INTERVAL_SECONDS):
                self._report()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            # Best effort: the key expires by itself if Redis is unreachable now.
            with contextlib.suppress(Exception):
                status.clear_status(state_redis(), self.config.client_id)
            log.info("MQTT subscriber stopped")

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        log.info("MQTT subscriber stopping", signal=signal.Signals(signum).name)
        self.stopping.set()


def main() -> None:
    subscriber = Subscriber(SubscriberConfig.from_settings())
    signal.signal(signal.SIGTERM, subscriber.request_stop)
    signal.signal(signal.SIGINT, subscriber.request_stop)
    subscriber.run()
