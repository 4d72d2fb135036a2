"""A Mosquitto running the shipped deploy/mosquitto/mosquitto.conf, and MQTT clients to probe it.

Of the shipped config only what a test machine must change is changed: ports, file paths, the
log destination and the user to run as; `render_shipped_config` refuses to start a broker when a
line it changes is gone, rather than run something else. The password file and ACL are written
by `manage.py sync_mqtt_credentials` from the test's device registry, and the device listener's
certificate is self-signed here.
"""

from __future__ import annotations

import getpass
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.environment import free_port
from tests.services import ROOT, Service, executable, port_open, wait_for
from tests.tls import self_signed_certificate

SHIPPED_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
APP_LISTENER = "listener 1883 127.0.0.1"
DEVICE_LISTENER = "listener 8883"
TIMEOUT = 5.0


def render_shipped_config(
    *,
    app_port: int,
    device_port: int,
    password_file: Path,
    acl_file: Path,
    certificate: tuple[Path, Path],
    data_dir: Path,
) -> str:
    """The shipped config with test ports and paths; every other line as shipped."""
    replacements = {
        APP_LISTENER: f"listener {app_port} 127.0.0.1",
        DEVICE_LISTENER: f"listener {device_port} 127.0.0.1",
        "password_file": f"password_file {password_file}",
        "acl_file": f"acl_file {acl_file}",
        "certfile": f"certfile {certificate[0]}",
        "keyfile": f"keyfile {certificate[1]}",
        "persistence_location": f"persistence_location {data_dir}/",
        "log_dest": "log_dest stdout",
    }
    found: set[str] = set()
    lines = []
    for line in SHIPPED_CONF.read_text().splitlines():
        key = line if line.startswith("listener ") else line.split(" ", 1)[0]
        if key in replacements:
            if key in found:
                raise AssertionError(f"{SHIPPED_CONF} sets {key} twice; update this renderer")
            found.add(key)
            line = replacements[key]
        lines.append(line)
    if missing := set(replacements) - found:
        raise AssertionError(
            f"{SHIPPED_CONF} no longer has {sorted(missing)}; update this renderer"
        )
    # As root Mosquitto would switch to the `mosquitto` user, who cannot read the test's files.
    return "\n".join([*lines, f"user {getpass.getuser()}", ""])


@dataclass
class Probe:
    """A paho MQTT 5 client that records everything the broker tells it."""

    client: mqtt.Client
    connacks: list[tuple[ReasonCode, bool]] = field(default_factory=list)  # (code, session)
    disconnects: list[ReasonCode] = field(default_factory=list)
    received: list[mqtt.MQTTMessage] = field(default_factory=list)
    granted: dict[int, list[ReasonCode]] = field(default_factory=dict)
    acknowledged: dict[int, ReasonCode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client.on_connect = lambda _c, _u, flags, code, _p: self.connacks.append(
            (code, flags.session_present)
        )
        self.client.on_disconnect = lambda _c, _u, _f, code, _p: self.disconnects.append(code)
        self.client.on_message = lambda _c, _u, message: self.received.append(message)
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.granted.__setitem__(
            mid, codes
        )
        self.client.on_publish = lambda _c, _u, mid, code, _p: self.acknowledged.__setitem__(
            mid, code
        )

    def connect(
        self, port: int, *, clean_start: bool = True, session_expiry: int = 0
    ) -> tuple[ReasonCode, bool]:
        """Connect and wait for the CONNACK: (its reason code, whether a session was kept)."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry
        self.connacks.clear()
        self.client.connect(
            "127.0.0.1", port, keepalive=30, clean_start=clean_start, properties=properties
        )
        self.client.loop_start()
        return wait_for(lambda: self.connacks, timeout=TIMEOUT, what="CONNACK")[0]

    def subscribe(self, topic: str | list[tuple[str, Any]]) -> list[ReasonCode]:
        """Subscribe at QoS 1 (or with the options given per filter) and wait for the SUBACK."""
        if isinstance(topic, str):
            _rc, mid = self.client.subscribe(topic, qos=1)
        else:
            _rc, mid = self.client.subscribe(topic)
        return wait_for(lambda: self.granted.get(mid), timeout=TIMEOUT, what=f"SUBACK {topic}")

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1; the broker's PUBACK reason code (not authorised, for one)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return wait_for(
            lambda: self.acknowledged.get(info.mid), timeout=TIMEOUT, what=f"PUBACK {topic}"
        )

    def topics(self) -> list[str]:
        return [message.topic for message in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def device_client(user: str | None, password: str | None, ca_file: Path, **kwargs: Any) -> Probe:
    """A device's client for the TLS listener: it checks the broker's certificate."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=kwargs.pop("client_id", f"probe-{uuid.uuid4().hex[:8]}"),
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(ca_certs=str(ca_file))
    if user is not None:
        client.username_pw_set(user, password)
    return Probe(client)


@dataclass
class Broker:
    service: Service
    app_port: int  # the application's loopback listener
    device_port: int  # the devices' TLS listener
    ca_file: Path

    def log(self) -> str:
        return self.service.log()


def start_shipped_broker(directory: Path, password_file: Path, acl_file: Path) -> Broker:
    app_port, device_port = free_port(), free_port()
    certificate = self_signed_certificate(directory)
    (directory / "data").mkdir()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        render_shipped_config(
            app_port=app_port,
            device_port=device_port,
            password_file=password_file,
            acl_file=acl_file,
            certificate=certificate,
            data_dir=directory / "data",
        )
    )
    service = Service(
        "mosquitto", [executable("mosquitto"), "-c", str(conf)], directory / "mosquitto.log"
    )
    try:
        wait_for(
            lambda: port_open(app_port) and port_open(device_port),
            timeout=10,
            what="mosquitto with the shipped config",
        )
    except TimeoutError:
        service.stop()
        raise AssertionError(f"mosquitto did not start:\n{service.log()}") from None
    return Broker(service, app_port, device_port, certificate[0])
