"""MQTT against the shipped broker config: what a device with valid credentials still cannot do.

The broker runs deploy/mosquitto/mosquitto.conf with test ports and paths (mqtt_broker.py); its
password file and ACL come from `manage.py device_password` and `sync_mqtt_credentials` over a
test registry. Application clients are the product's own (`app_client`), on the loopback
listener; devices connect over TLS to the device listener, as in production. Every "never
received" is bounded by a later message on the same path that is received.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command
from paho.mqtt.enums import CallbackAPIVersion

from tests.security.mqtt_broker import Broker, Probe, device_client, start_shipped_broker
from tests.services import wait_for

DEVICES = {"sensor-1": "sensor", "sensor-2": "sensor", "panic-1": "panic_button"}
NOT_AUTHORISED = 0x87
RETAIN_NOT_SUPPORTED = 0x9A


@pytest.fixture
def passwords(db: None, settings, tmp_path: Path) -> dict[str, str]:
    """The test registry's devices and the password each was given; the broker's files written."""
    from apps.devices.services import register_device
    from apps.tenants.models import Tenant

    settings.MQTT_USERNAME, settings.MQTT_PASSWORD = "intelliwiz", secrets.token_urlsafe(18)
    settings.MQTT_PASSWORD_FILE, settings.MQTT_ACL_FILE = tmp_path / "passwd", tmp_path / "acl"
    tenant = Tenant.objects.create(name="acme")
    given = {}
    for device_id, kind in DEVICES.items():
        register_device(tenant, device_id, kind)
        out = StringIO()
        call_command("device_password", "--id", device_id, stdout=out, stderr=StringIO())
        given[device_id] = out.getvalue().strip()
    call_command("sync_mqtt_credentials", "--no-reload", stdout=StringIO())
    return given


@pytest.fixture
def broker(passwords: dict[str, str], settings, tmp_path: Path) -> Iterator[Broker]:
    broker = start_shipped_broker(tmp_path, settings.MQTT_PASSWORD_FILE, settings.MQTT_ACL_FILE)
    yield broker
    broker.service.stop()


@dataclass
class Clients:
    """Opens probes on the test's broker and closes them after the test."""

    broker: Broker
    passwords: dict[str, str]
    opened: list[Probe]

    def app(self, client_id: str | None = None) -> Probe:
        """The application account, as the subscriber, downlink and health check log in."""
        from apps.mqtt.client import app_client

        probe = Probe(app_client(client_id, role="probe"))
        self.opened.append(probe)
        return probe

    def device(self, device_id: str, *, client_id: str | None = None) -> Probe:
        password = self.passwords[device_id]
        probe = device_client(device_id, password, self.broker.ca_file, client_id=client_id)
        self.opened.append(probe)
        return probe

    def app_connected(self, *subscriptions: str) -> Probe:
        probe = self.app()
        assert not probe.connect(self.broker.app_port)[0].is_failure
        for topic in subscriptions:
            probe.subscribe(topic)
        return probe

    def device_connected(self, device_id: str) -> Probe:
        probe = self.device(device_id)
        assert not probe.connect(self.broker.device_port)[0].is_failure
        return probe


@pytest.fixture
def clients(broker: Broker, passwords: dict[str, str]) -> Iterator[Clients]:
    made = Clients(broker, passwords, [])
    yield made
    for probe in made.opened:
        probe.close()


def anonymous(port: int, ca_file: Path | None) -> Probe:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))
    return Probe(client)


def received_by(probe: Probe, count: int) -> Callable[[], bool]:
    return lambda: len(probe.received) >= count


def test_anonymous_clients_are_refused_on_both_listeners(broker: Broker):
    for port, ca_file in [(broker.app_port, None), (broker.device_port, broker.ca_file)]:
        probe = anonymous(port, ca_file)
        try:
            code, _session = probe.connect(port)
        finally:
            probe.close()
        assert code.is_failure, f"anonymous client accepted on port {port}"


def test_a_wrong_device_password_is_refused(broker: Broker, clients: Clients):
    impostor = device_client("sensor-1", "not-its-password", broker.ca_file)
    clients.opened.append(impostor)
    assert impostor.connect(broker.device_port)[0].is_failure


def test_a_device_cannot_publish_under_another_devices_id(clients: Clients):
    app = clients.app_connected("#")
    sensor = clients.device_connected("sensor-1")

    assert sensor.publish("device/sensor-2/telemetry").value == NOT_AUTHORISED
    assert sensor.publish("alert/panic-1/panic").value == NOT_AUTHORISED
    assert not sensor.publish("device/sensor-1/telemetry").is_failure

    wait_for(received_by(app, 1), timeout=5, what="the application to receive sensor-1's own")
    assert app.topics() == ["device/sensor-1/telemetry"]


def test_a_device_may_publish_only_under_the_prefixes_of_its_kind(clients: Clients):
    app = clients.app_connected("#")
    sensor = clients.device_connected("sensor-1")
    panic = clients.device_connected("panic-1")

    # A sensor has no guard/ (GPS) or system/ (health) messages; a panic button no sensor/.
    assert sensor.publish("guard/sensor-1/gps").value == NOT_AUTHORISED
    assert sensor.publish("system/sensor-1/health").value == NOT_AUTHORISED
    assert panic.publish("sensor/panic-1/smoke").value == NOT_AUTHORISED
    assert not sensor.publish("sensor/sensor-1/temperature").is_failure
    assert not panic.publish("alert/panic-1/panic").is_failure

    wait_for(received_by(app, 2), timeout=5, what="the application to receive both allowed")
    assert sorted(app.topics()) == ["alert/panic-1/panic", "sensor/sensor-1/temperature"]


def test_a_device_subscribed_to_everything_receives_only_its_own_commands(clients: Clients):
    sensor = clients.device_connected("sensor-1")
    sensor.subscribe("#")
    sensor.subscribe("$SYS/#")
    app = clients.app_connected("#", "$SYS/broker/uptime")
    other = clients.device_connected("sensor-2")

    other.publish("device/sensor-2/telemetry")
    app.publish("command/sensor-2/reboot")
    # $SYS is published every 2 s: two uptimes and every $SYS topic went by the device too.
    wait_for(
        lambda: app.topics().count("$SYS/broker/uptime") >= 2,
        timeout=10,
        what="two $SYS/broker/uptime updates",
    )
    assert {"device/sensor-2/telemetry", "command/sensor-2/reboot"} <= set(app.topics())
    app.publish("command/sensor-1/reboot")

    wait_for(received_by(sensor, 1), timeout=5, what="sensor-1 to receive its own command")
    assert sensor.topics() == ["command/sensor-1/reboot"]


@pytest.mark.parametrize("clean_start", [True, False], ids=["clean-start", "resume-session"])
def test_a_device_cannot_take_over_the_subscribers_session(
    clean_start: bool, clients: Clients, broker: Broker, settings
):
    from apps.mqtt.subscriber import SubscriberConfig

    subscriber_id = settings.MQTT_CLIENT_ID
    subscriber = clients.app(subscriber_id)

    def connect_subscriber() -> bool:
        code, session_present = subscriber.connect(
            broker.app_port, clean_start=False, session_expiry=settings.MQTT_SESSION_EXPIRY
        )
        assert not code.is_failure
        return session_present

    def attack() -> Probe:
        """sensor-2 connects under the subscriber's client id, and is let in (its own)."""
        attacker = clients.device("sensor-2", client_id=subscriber_id)
        code, _ = attacker.connect(broker.device_port, clean_start=clean_start, session_expiry=600)
        assert not code.is_failure
        return attacker

    connect_subscriber()
    subscriber.subscribe(SubscriberConfig.from_settings().subscriptions())
    sensor = clients.device_connected("sensor-1")

    # While the subscriber is connected: it is not disconnected, and goes on receiving.
    attack().close()
    sensor.publish("device/sensor-1/telemetry", b'{"n": 1}')
    wait_for(received_by(subscriber, 1), timeout=5, what="the subscriber to receive n=1")
    assert subscriber.disconnects == []

    # While it is away: its session keeps what is queued for it, and only it receives it.
    subscriber.close()
    sensor.publish("device/sensor-1/telemetry", b'{"n": 2}')
    attacker = attack()
    attacker.subscribe("command/sensor-2/#")
    clients.app_connected().publish("command/sensor-2/ping")
    wait_for(received_by(attacker, 1), timeout=5, what="sensor-2 to receive its own command")
    assert attacker.topics() == ["command/sensor-2/ping"]
    attacker.close()

    assert connect_subscriber(), "the subscriber's persistent session is gone"
    wait_for(received_by(subscriber, 2), timeout=5, what="the queued n=2")
    assert [m.payload for m in subscriber.received] == [b'{"n": 1}', b'{"n": 2}']


def test_a_retained_publish_is_refused_and_never_delivered_as_retained(
    clients: Clients, broker: Broker
):
    app = clients.app_connected("device/#")
    sensor = clients.device_connected("sensor-1")

    sensor.client.publish("device/sensor-1/telemetry", b'{"retained": true}', qos=1, retain=True)
    wait_for(lambda: sensor.disconnects, timeout=5, what="the broker to disconnect sensor-1")
    assert sensor.disconnects[0].value == RETAIN_NOT_SUPPORTED

    later = clients.app_connected("device/#")  # a retained message would be sent to it now
    again = clients.device_connected("sensor-1")
    again.publish("device/sensor-1/telemetry", b'{"live": true}')
    for probe in (app, later):
        wait_for(received_by(probe, 1), timeout=5, what="the live message")
        assert [(m.payload, m.retain) for m in probe.received] == [(b'{"live": true}', False)]


def test_the_health_check_still_reads_the_broker_uptime_in_time(clients: Clients):
    """Without retained messages `$SYS/broker/uptime` must come live, within the health
    script's deadline (CHECK_TIMEOUT, 5 s); it is published every 2 s."""
    app = clients.app_connected()
    started = time.monotonic()
    app.subscribe("$SYS/broker/uptime")
    wait_for(received_by(app, 1), timeout=5, what="$SYS/broker/uptime")
    assert time.monotonic() - started < 3
