"""The subscriber's handling of one delivery, without a broker (end to end: test_ingest.py)."""

from __future__ import annotations

import pytest
from paho.mqtt.client import MQTTMessage

from apps.mqtt.subscriber import Subscriber, SubscriberConfig
from tests.factories import create_tenant_with_devices, telemetry
from tests.services import metric

pytestmark = pytest.mark.django_db


def delivery(topic: str, body: str, *, retain: bool) -> MQTTMessage:
    message = MQTTMessage(mid=0, topic=topic.encode())
    message.payload = body.encode()
    message.retain = retain
    return message


def test_a_retained_delivery_is_skipped_and_counted_not_processed_again():
    # The broker should not send one (retain handling 2); one that ignores that replays
    # a message that was processed when it was live.
    create_tenant_with_devices("acme", "sensor-001")
    subscriber = Subscriber(SubscriberConfig.from_settings())
    skipped = metric("mqtt_messages_retained_skipped_total")

    subscriber._on_message(
        subscriber.client, None, delivery("device/sensor-001/telemetry", telemetry(), retain=True)
    )
    assert not subscriber.pending
    assert not subscriber.rejections
    assert metric("mqtt_messages_retained_skipped_total") == skipped + 1

    subscriber._on_message(
        subscriber.client, None, delivery("device/sensor-001/telemetry", telemetry(), retain=False)
    )
    assert len(subscriber.pending["telemetry"].envelopes) == 1


def test_every_subscription_asks_the_broker_not_to_send_retained_messages():
    from paho.mqtt.subscribeoptions import SubscribeOptions

    config = SubscriberConfig.from_settings()
    assert config.subscriptions()
    for topic, options in config.subscriptions():
        assert options.retainHandling == SubscribeOptions.RETAIN_DO_NOT_SEND, topic
        assert options.QoS == 1, topic
