"""Commands to devices over MQTT, on one persistent connection per worker process.

Publish errors are raised, never swallowed, so the circuit breaker sees them.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from django.conf import settings

from apps.devices.commands import CommandRefused
from apps.devices.commands import check_command as check_command_rules
from apps.devices.models import is_device_id
from apps.mqtt.client import app_client

log = structlog.get_logger(__name__)

COMMAND_TOPIC = "command/{device_id}/{command}"
PUBLISH_TIMEOUT_SECONDS = 5.0


class DownlinkError(Exception):
    pass


# A command that can never be sent (no retry helps); its rules are apps/devices/commands.py's.
InvalidCommandError = CommandRefused


def check_command(device_id: str, command: str, params: dict[str, Any] | None = None) -> None:
    if not is_device_id(device_id):
        raise InvalidCommandError(f"not a device id: {device_id!r}")
    check_command_rules(command, params if params is not None else {})


class Downlink:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None

    def _connected_client(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        if self._client is not None:  # a dead connection: close it before opening another
            self._client.disconnect()
            self._client.loop_stop()
        client = app_client(role="downlink")
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise DownlinkError(
                f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}"
            ) from exc
        client.loop_start()
        if not connected.wait(PUBLISH_TIMEOUT_SECONDS) or not client.is_connected():
            client.loop_stop()
            raise DownlinkError(
                f"MQTT broker at {self.host}:{self.port} did not accept the connection"
            )
        self._client = client
        return client

    def publish(
        self,
        device_id: str,
        command: str,
        params: dict[str, Any],
        command_id: str,
        expires_at: str | None = None,
    ) -> None:
        """Publish a command; `command_id` lets the device ignore a retried duplicate, and
        answer on device/<id>/command_ack (docs/commands.md)."""
        check_command(device_id, command, params)
        topic = COMMAND_TOPIC.format(device_id=device_id, command=command)
        message = {"command": command, "command_id": command_id, "params": params}
        if expires_at is not None:
            message["expires_at"] = expires_at
        body = json.dumps(message)
        with self._lock:
            info = self._connected_client().publish(topic, body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DownlinkError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout=PUBLISH_TIMEOUT_SECONDS)
        if not info.is_published():
            raise DownlinkError(f"broker did not acknowledge the command on {topic} in time")


_downlink: Downlink | None = None


def downlink() -> Downlink:
    """This process's downlink (created on first use, so after a worker forks)."""
    global _downlink
    if _downlink is None:
        _downlink = Downlink(settings.MQTT_HOST, settings.MQTT_PORT)
    return _downlink
