"""deploy/mosquitto/ and deploy/redis/: the configs run, the ACL holds, Redis wants its password."""

from __future__ import annotations

import getpass
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis
from django.test import override_settings
from paho.mqtt.enums import CallbackAPIVersion

from apps.mqtt.credentials import mosquitto_hash, render_acl, render_password_file
from tests import environment
from tests.environment import free_port
from tests.services import ROOT, Service, executable, port_open, wait_for

DEPLOY = ROOT / "deploy"
ACCOUNTS = {"intelliwiz": "app-secret", "dev-001": "secret-1", "dev-002": "secret-2"}


def rewrite(text: str, lines: dict[str, str]) -> str:
    """Replace each line that starts with a key of `lines` by its value."""
    result = []
    for line in text.splitlines():
        result.append(next((new for old, new in lines.items() if line.startswith(old)), line))
    return "\n".join(result) + "\n"


@pytest.fixture
def production_mosquitto(tmp_path: Path) -> Iterator[int]:
    """deploy/mosquitto/mosquitto.conf and acl.example, with only paths and ports changed."""
    # The password file as sync_mqtt_credentials writes it: Mosquitto must accept our hashes.
    passwd = tmp_path / "passwd"
    passwd.write_text(
        render_password_file((user, mosquitto_hash(pw)) for user, pw in ACCOUNTS.items())
    )
    self_signed = [
        "openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(tmp_path / "server.key"), "-out", str(tmp_path / "server.crt"),
    ]  # fmt: skip
    subprocess.run(self_signed, check=True, capture_output=True)
    (tmp_path / "data").mkdir()
    port, tls_port = free_port(), free_port()
    conf = rewrite(
        (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(),
        {
            "password_file ": f"password_file {passwd}",
            "acl_file ": f"acl_file {DEPLOY / 'mosquitto' / 'acl.example'}",
            "listener 1883 ": f"listener {port} 127.0.0.1",
            "listener 8883": f"listener {tls_port} 127.0.0.1",
            "certfile ": f"certfile {tmp_path / 'server.crt'}",
            "keyfile ": f"keyfile {tmp_path / 'server.key'}",
            "persistence_location ": f"persistence_location {tmp_path / 'data'}/",
            "log_dest ": f"log_dest stdout\nuser {getpass.getuser()}",
        },
    )
    (tmp_path / "mosquitto.conf").write_text(conf)
    service = Service(
        "mosquitto",
        [executable("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
        tmp_path / "mosquitto.log",
    )
    try:
        wait_for(lambda: port_open(port) and port_open(tls_port), timeout=10, what="mosquitto")
        yield port
    finally:
        service.stop()


@dataclass
class Session:
    """A connected MQTT 5 client that records what it receives and what the broker granted."""

    client: mqtt.Client
    received: list[str] = field(default_factory=list)
    granted: dict[int, list[int]] = field(default_factory=dict)

    def subscribe(self, topic: str) -> list[int]:
        _result, mid = self.client.subscribe(topic, qos=1)
        return wait_for(lambda: self.granted.get(mid), timeout=5, what=f"SUBACK for {topic}")

    def publish(self, topic: str) -> None:
        self.client.publish(topic, b"{}", qos=1).wait_for_publish(timeout=5)


@pytest.fixture
def connect(production_mosquitto: int) -> Iterator[Any]:
    sessions: list[Session] = []

    def open_session(user: str, password: str) -> Session:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        session = Session(client)
        client.on_message = lambda _c, _u, message: session.received.append(message.topic)
        client.on_subscribe = lambda _c, _u, mid, codes, _p: session.granted.__setitem__(
            mid, [code.value for code in codes]
        )
        client.username_pw_set(user, password)
        client.connect("127.0.0.1", production_mosquitto)
        client.loop_start()
        sessions.append(session)
        wait_for(client.is_connected, timeout=5, what=f"{user} to connect")
        return session

    yield open_session
    for session in sessions:
        session.client.disconnect()
        session.client.loop_stop()


def test_a_device_publishes_only_under_its_own_id(connect: Any):
    app = connect("intelliwiz", ACCOUNTS["intelliwiz"])
    assert app.subscribe("#") == [1]
    device = connect("dev-001", ACCOUNTS["dev-001"])

    device.publish("device/dev-002/telemetry")  # someone else's id: dropped by the broker
    device.publish("device/dev-001/telemetry")

    wait_for(lambda: app.received, timeout=5, what="the application to receive dev-001's message")
    assert app.received == ["device/dev-001/telemetry"]


def test_a_device_subscribed_to_everything_receives_only_its_own_commands(connect: Any):
    """Mosquitto checks read access per delivered message, so `#` yields a device nothing more."""
    device = connect("dev-001", ACCOUNTS["dev-001"])
    device.subscribe("#")
    app = connect("intelliwiz", ACCOUNTS["intelliwiz"])
    app.subscribe("#")
    other = connect("dev-002", ACCOUNTS["dev-002"])

    other.publish("device/dev-002/telemetry")
    app.publish("command/dev-002/reboot")
    wait_for(lambda: len(app.received) == 2, timeout=5, what="the application to receive both")
    app.publish("command/dev-001/reboot")

    wait_for(lambda: device.received, timeout=5, what="dev-001 to receive its command")
    assert device.received == ["command/dev-001/reboot"]


def connack(port: int, user: str | None, password: str | None) -> Any:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user:
        client.username_pw_set(user, password)
    codes: list[Any] = []
    client.on_connect = lambda _c, _u, _f, code, _p: codes.append(code)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return wait_for(lambda: codes, timeout=5, what="CONNACK")[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_anonymous_and_wrong_password_clients_are_refused(production_mosquitto: int):
    assert connack(production_mosquitto, None, None).is_failure
    assert connack(production_mosquitto, "dev-001", "wrong").is_failure
    assert not connack(production_mosquitto, "dev-001", ACCOUNTS["dev-001"]).is_failure


def start_production_redis(directory: Path, port: int, auth_file: Path) -> Service:
    """deploy/redis/redis.conf, its password file and paths moved into `directory`."""
    conf = rewrite(
        (DEPLOY / "redis" / "redis.conf").read_text(), {"include ": f"include {auth_file}"}
    )
    (directory / "redis.conf").write_text(conf)
    argv = [executable("redis-server"), str(directory / "redis.conf")]
    argv += ["--port", str(port), "--dir", str(directory), "--logfile", ""]
    argv += ["--pidfile", str(directory / "redis.pid"), "--supervised", "no"]
    return Service("redis", argv, directory / "redis.log")


@pytest.fixture
def production_redis(tmp_path: Path) -> Iterator[int]:
    """The production Redis with the password file its comments tell the deployer to write."""
    port, auth_file = free_port(), tmp_path / "intelliwiz-auth.conf"
    auth_file.write_text(f"requirepass {environment.REDIS_PASSWORD}\n")
    service = start_production_redis(tmp_path, port, auth_file)
    try:
        wait_for(lambda: port_open(port), timeout=10, what="redis with deploy/redis/redis.conf")
        yield port
    finally:
        service.stop()


def test_the_production_redis_config_keeps_every_queued_task(production_redis: int):
    client = redis.Redis.from_url(environment.redis_url(production_redis), decode_responses=True)
    config = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy")}
    config |= client.config_get("appendfsync")
    assert config == {
        "appendonly": "yes",
        "maxmemory-policy": "noeviction",
        "appendfsync": "everysec",
    }


def refuses_without_the_password(port: int) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(environment.redis_url(port, password="guess")).ping()
    assert redis.Redis.from_url(environment.redis_url(port)).ping()


def test_the_production_redis_refuses_a_client_without_the_password(production_redis: int):
    refuses_without_the_password(production_redis)


def test_the_production_redis_does_not_start_without_its_password_file(tmp_path: Path):
    service = start_production_redis(tmp_path, free_port(), tmp_path / "missing.conf")
    try:
        service.process.wait(10)
    finally:
        service.stop()
    assert service.process.returncode != 0
    assert "can't open config file" in service.log()


def test_make_runs_redis_refuses_a_client_without_the_password(tmp_path: Path):
    from apps.monitoring import stack

    paths = stack.StackPaths(tmp_path / "var")
    port = free_port()
    with override_settings(REDIS_HOST="127.0.0.1", REDIS_PORT=port):
        stack.write_service_configs(paths)
    conf = paths.var_dir / "redis" / "redis.conf"
    assert conf.stat().st_mode & 0o777 == 0o600, "the rendered config holds the password"
    service = Service("redis", [executable("redis-server"), str(conf)], tmp_path / "redis.log")
    try:
        wait_for(lambda: port_open(port), timeout=10, what="make run's redis")
        refuses_without_the_password(port)
    finally:
        service.stop()


def test_the_example_acl_is_exactly_what_sync_mqtt_credentials_writes():
    devices = [("dev-001", "sensor"), ("dev-002", "panic_button")]
    assert (DEPLOY / "mosquitto" / "acl.example").read_text() == render_acl("intelliwiz", devices)
