"""The one way the application opens an MQTT client: MQTT 5, paho's v2 callbacks, our account."""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion


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
