"""The shared circuit breaker on real Redis, and commands to devices through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from apps.core.circuit_breaker import CircuitBreaker, CircuitOpenError, read_state
from apps.core.tasks.celery_settings import PUBLISH_DEVICE_COMMAND, worker_argv
from apps.mqtt.downlink import Downlink, DownlinkError, InvalidCommandError, check_command
from tests import environment
from tests.environment import free_port
from tests.services import Service, metric, start_mosquitto, start_redis, wait_for


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


def test_after_the_timeout_only_one_of_many_concurrent_callers_makes_the_trial_call(redis_client):
    CircuitBreaker("webhook", failure_threshold=1, reset_timeout=0.2).record_failure()
    opened_at = read_state(redis_client, "webhook").opened_at
    wait_for(lambda: time.time() > opened_at + 0.2, timeout=5, what="the reset timeout to pass")
    made: list[int] = []
    refused: list[str] = []
    release = threading.Event()

    def caller(number: int) -> None:
        # A breaker object per caller, as in separate worker processes: only Redis is shared.
        try:
            CircuitBreaker("webhook", reset_timeout=0.2).call(
                lambda: made.append(number) or release.wait(10)
            )
        except CircuitOpenError as exc:
            refused.append(str(exc))

    callers = [threading.Thread(target=caller, args=(number,)) for number in range(8)]
    for thread in callers:
        thread.start()
    # The trial call is held until every other caller has been answered.
    wait_for(lambda: len(refused) == 7, timeout=10, what="seven callers to be refused")
    release.set()
    for thread in callers:
        thread.join(10)
    assert len(made) == 1
    assert all("half-open for webhook: a trial call is under way" in r for r in refused)
    assert read_state(redis_client, "webhook").state == "closed"


def _worker(name: str, tmp_path: Path, env: dict[str, str]) -> Service:
    """An external_api worker as `make run` starts one, also reading a queue of its own."""
    argv = worker_argv("external_api")
    argv[argv.index("--queues") + 1] = f"external_api,{name}"
    argv[argv.index("--hostname") + 1] = f"{name}-{os.getpid()}@%h"
    return Service(name, [sys.executable, "-m", *argv], tmp_path / f"{name}.log", env=env)


def test_with_the_broker_down_workers_share_one_breaker_that_refuses_without_connecting(
    tmp_path: Path, django_db_setup: None
):
    """The downlink's breaker across two worker processes on a Redis of their own, Mosquitto
    down until the end, the reset timeout shortened from 300 s to `reset`."""
    import redis

    from intelliwiz_config.celery import app

    reset = 4
    redis_port, mqtt_port = free_port(), free_port()
    url = environment.redis_url(redis_port)
    private_redis = start_redis(redis_port, tmp_path / "redis")
    client = redis.Redis.from_url(f"{url}/0", decode_responses=True)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "MQTT_PORT": str(mqtt_port),
        "CIRCUIT_BREAKER_RESET_SECONDS": str(reset),
        "LOG_LEVEL": "INFO",
    }
    a, b = _worker("breaker_a", tmp_path, env), _worker("breaker_b", tmp_path, env)
    broker: Service | None = None

    def send(queue: str, **params: str) -> None:
        with app.connection_for_write(f"{url}/0") as connection:
            app.send_task(
                PUBLISH_DEVICE_COMMAND,
                args=["door-7", "unlock", params],
                queue=queue,
                connection=connection,
            )

    def breaker() -> Any:
        return read_state(client, "mqtt_broker")

    def counted(name: str, **labels: str) -> float:
        return metric(name, service="mqtt_broker", **labels)

    try:
        wait_for(
            lambda: len(client.keys("worker_heartbeat:*")) == 4,  # two queues each
            timeout=60,
            what="both workers to consume",
        )
        refused_before = counted("circuit_breaker_calls_refused_total")
        half_opened_before = counted("circuit_breaker_transitions_total", state="half_open")
        closed_before = counted("circuit_breaker_transitions_total", state="closed")

        # Worker A makes five publishes; each fails to connect and the fifth opens the breaker.
        for number in range(5):
            send("breaker_a", attempt=str(number))
        wait_for(lambda: breaker().state == "open", timeout=30, what="the breaker to open")
        opened = breaker()
        assert opened.failures == 5
        wait_for(
            lambda: a.log().count("cannot reach the MQTT broker") == 5,
            timeout=reset,
            what="worker A to log its five failed publishes",
        )

        # Worker B, which never failed, refuses without trying: no connection, no new failure.
        for number in range(4):
            send("breaker_b", refused=str(number))
        wait_for(
            lambda: b.log().count("Circuit breaker open for mqtt_broker: 5 failures") >= 4,
            timeout=reset,
            what="worker B to refuse the four commands",
        )
        assert breaker() == opened, "a call was let through before the reset timeout"
        assert "cannot reach the MQTT broker" not in b.log()
        assert counted("circuit_breaker_calls_refused_total") >= refused_before + 4

        # The broker is back: after the timeout one retried command is the trial; it closes it.
        broker = start_mosquitto(mqtt_port, tmp_path / "mosquitto")
        wait_for(lambda: breaker().state == "closed", timeout=30, what="the breaker to close")
        assert time.time() >= (opened.opened_at or 0) + reset
        assert counted("circuit_breaker_transitions_total", state="half_open") > half_opened_before
        assert counted("circuit_breaker_transitions_total", state="closed") > closed_before
        received: list[dict[str, Any]] = []
        subscribed = threading.Event()
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="device-door-7")
        device.on_subscribe = lambda *args: subscribed.set()
        device.on_message = lambda c, u, m: received.append(json.loads(m.payload)["params"])
        device.connect("127.0.0.1", mqtt_port)
        device.subscribe("command/door-7/#", qos=1)
        device.loop_start()
        try:
            assert subscribed.wait(10)
            send("breaker_a", after="a")
            send("breaker_b", after="b")
            wait_for(
                lambda: {"after": "a"} in received and {"after": "b"} in received,
                timeout=20,
                what="both workers to publish again",
            )
        finally:
            device.loop_stop()
            device.disconnect()
    finally:
        for service in (a, b, broker, private_redis):
            if service is not None:
                service.stop()
