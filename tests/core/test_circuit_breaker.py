"""The shared circuit breaker on real Redis, and commands to devices through it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from apps.core.circuit_breaker import CircuitBreaker, CircuitOpenError, read_state
from apps.mqtt.downlink import Downlink, DownlinkError, InvalidCommandError, check_command
from tests import environment
from tests.environment import free_port
from tests.services import Service, wait_for


def failing() -> None:
    raise ConnectionError("broker down")


def test_the_breaker_opens_after_the_threshold_and_is_readable_with_plain_redis_cli(redis_client):
    breaker = CircuitBreaker("mqtt_broker", failure_threshold=3, reset_timeout=60)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(failing)
    with pytest.raises(CircuitOpenError, match="Circuit breaker open for mqtt_broker"):
        breaker.call(lambda: "never called")

    # As the runbook has operators run it: the password in REDISCLI_AUTH, not on the command line.
    raw = subprocess.run(
        ["redis-cli", "-p", str(environment.REDIS_PORT), "GET", "circuit_breaker:mqtt_broker"],
        env={**os.environ, "REDISCLI_AUTH": environment.REDIS_PASSWORD},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    record = json.loads(raw)
    assert record["state"] == "open"
    assert record["failures"] == 3


def test_after_the_timeout_one_trial_call_closes_it_again(redis_client):
    breaker = CircuitBreaker("webhook", failure_threshold=1, reset_timeout=0.2)
    with pytest.raises(ConnectionError):
        breaker.call(failing)
    assert read_state(breaker.client, "webhook").state == "open"
    wait_for(lambda: breaker.call(lambda: "ok") == "ok", timeout=5, what="a half-open trial")
    assert read_state(breaker.client, "webhook").state == "closed"
    assert read_state(breaker.client, "webhook").failures == 0


def test_a_failed_trial_opens_the_breaker_again(redis_client):
    breaker = CircuitBreaker("email", failure_threshold=1, reset_timeout=0.2)
    with pytest.raises(ConnectionError):
        breaker.call(failing)

    def trial_fails() -> bool:
        try:
            breaker.call(failing)
        except CircuitOpenError:
            return False
        except ConnectionError:
            return True
        return False

    wait_for(trial_fails, timeout=5, what="the half-open trial to run")
    assert read_state(breaker.client, "email").state == "open"


def test_publishing_to_an_unreachable_broker_raises_instead_of_swallowing():
    with pytest.raises(DownlinkError, match="cannot reach the MQTT broker"):
        Downlink("127.0.0.1", free_port()).publish("dev-1", "reboot", {}, "cmd-1")


def test_a_command_that_could_never_be_sent_is_refused_before_the_breaker():
    with pytest.raises(InvalidCommandError, match="command must be"):
        check_command("dev-1", "reboot/#")


def test_a_device_command_task_reaches_the_device_over_mqtt(
    redis_client: Any, all_queue_workers: list[Service], mosquitto_broker: Service
):
    from intelliwiz_config.celery import app

    received: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="device-door-7")
    device.on_subscribe = lambda *args: subscribed.set()
    device.on_message = lambda c, u, m: received.append((m.topic, json.loads(m.payload)))
    device.connect("127.0.0.1", environment.MQTT_PORT)
    device.subscribe("command/door-7/#", qos=1)
    device.loop_start()
    try:
        assert subscribed.wait(10)
        app.send_task("apps.mqtt.tasks.publish_device_command", args=["door-7", "unlock", {"s": 5}])
        wait_for(lambda: received, timeout=20, what="the command to reach the device")
    finally:
        device.loop_stop()
        device.disconnect()
    [(topic, body)] = received
    assert topic == "command/door-7/unlock"
    assert body["command"] == "unlock"
    assert body["params"] == {"s": 5}
    assert body["command_id"]  # the task id: a retried command carries the same one


def test_concurrent_failures_are_all_counted(redis_client):
    from concurrent.futures import ThreadPoolExecutor

    breaker = CircuitBreaker("webhook", failure_threshold=1000)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: breaker.record_failure(), range(200)))
    assert read_state(breaker.client, "webhook").failures == 200
