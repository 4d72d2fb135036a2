"""bus_status, drain and requeue against the real bus."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from apps.core import intake_status
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import GENERAL, broker_list_keys, worker_argv
from apps.devices.models import TelemetryReading
from apps.monitoring import bus_state
from apps.monitoring.celery_hooks import heartbeat_key
from tests import environment
from tests.factories import create_tenant_with_devices, telemetry
from tests.services import ROOT, Service, mqtt_publish, python_service, wait_for


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_drain_pauses_intake_waits_for_empty_queues_and_resume_lets_the_broker_deliver(
    bus: Service,
):
    create_tenant_with_devices("acme", "sensor-001")
    mqtt_publish(
        environment.MQTT_PORT,
        [("device/sensor-001/telemetry", telemetry(msg_id=f"d{i}")) for i in range(500)],
    )
    wait_for(lambda: TelemetryReading.objects.exists(), timeout=30, what="processing to start")

    output = run("drain", "--timeout", "120")

    assert "Drained" in output
    assert "manage.py drain --resume" in output
    client = state_redis()
    assert sum(queue.depth for queue in bus_state.queue_stats(client)) == 0
    assert bus_state.unacked_count(client) == 0
    statuses = intake_status.read_statuses(client)
    assert statuses
    # Paused means gone from the broker: a subscriber that is not connected receives nothing.
    assert all(sub.paused and not sub.connected for sub in statuses)
    handed_on = TelemetryReading.objects.count()

    # While paused, the broker keeps what devices send; after --resume it all arrives.
    mqtt_publish(environment.MQTT_PORT, [("device/sensor-001/telemetry", telemetry(msg_id="late"))])
    assert all(not sub.connected for sub in intake_status.read_statuses(client))
    assert TelemetryReading.objects.count() == handed_on
    assert "Intake resumed" in run("drain", "--resume")
    wait_for(
        lambda: TelemetryReading.objects.count() == 501,
        timeout=60,
        what="every message, the held-back ones included",
    )
    assert handed_on <= 500


def test_bus_status_shows_queues_workers_subscribers_breakers_and_dead_letters(bus: Service):
    from apps.core.circuit_breaker import CircuitBreaker

    wait_for(
        lambda: intake_status.read_statuses(state_redis()), timeout=15, what="subscriber status"
    )
    breaker = CircuitBreaker("webhook", failure_threshold=1)
    with pytest.raises(ConnectionError):
        breaker.call(lambda: (_ for _ in ()).throw(ConnectionError("down")))
    output = run("bus_status")
    for queue in ("critical", "high_priority", "general", "ml_training", "external_api"):
        assert queue in output
    assert "connected" in output
    assert "webhook            open" in output
    assert "Dead letters\n  none" in output


@pytest.mark.django_db
def test_bus_status_tells_a_cleanly_stopped_worker_from_one_whose_heartbeat_went_stale(
    redis_client: Any, tmp_path: Path
):
    argv = worker_argv(GENERAL.name)
    node = f"stop-check-{os.getpid()}@{socket.gethostname()}"
    argv[argv.index("--queues") + 1] = "stop_check"
    argv[argv.index("--hostname") + 1] = node
    worker = python_service("stop-check", ["-m", *argv], tmp_path / "worker.log")
    stopped_key = heartbeat_key("stop_check", node)
    try:
        wait_for(lambda: redis_client.exists(stopped_key), timeout=60, what="the heartbeat")
    finally:
        worker.stop()  # SIGTERM: Celery's warm shutdown, as `stackctl stop` and systemd do
    # What a worker killed ten minutes ago leaves: a heartbeat nobody refreshes.
    redis_client.set(heartbeat_key("stale_check", "crashed@host"), repr(time.time() - 600))

    lines = run("bus_status").splitlines()
    (stopped,) = [line for line in lines if node in line]
    (stale,) = [line for line in lines if "crashed@host" in line]
    assert "stopped  (cleanly, " in stopped
    assert "DOWN" not in stopped
    assert "DOWN  (last heartbeat 10 min ago: crashed or hung)" in stale
    # Neither counts as up: celery_worker_up 0, and requeue does not wait for them.
    beats = {beat.hostname: beat for beat in bus_state.read_worker_heartbeats(redis_client)}
    assert not beats[node].up
    assert beats[node].stopped
    assert not beats["crashed@host"].up
    assert not beats["crashed@host"].stopped


def waiting(queue: str, client: Any) -> int:
    return sum(int(client.llen(key)) for key in broker_list_keys(queue))


def _orphan_a_task() -> None:
    """A consumer that takes a task and dies without acknowledging it (like `kill -9`)."""
    code = (
        "import os, django; django.setup()\n"
        "from intelliwiz_config.celery import app\n"
        "with app.connection_for_write() as c:\n"
        "    ch = c.default_channel\n"
        "    assert ch.basic_get(queue='requeue_test', no_ack=False) is not None\n"
        "    os._exit(0)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "intelliwiz_config.settings"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def test_requeue_puts_tasks_of_killed_workers_back_on_their_queue(redis_client: Any):
    from intelliwiz_config.celery import app

    # A queue of its own, so that no worker of the test session takes the task back.
    app.send_task("apps.mqtt.tasks.process_device_telemetry", args=[[]], queue="requeue_test")
    _orphan_a_task()
    assert bus_state.unacked_count(redis_client) == 1
    assert waiting("requeue_test", redis_client) == 0

    # --force: this session's workers may be up, and they do not consume requeue_test.
    requests_before = intake_status.send_again_requests(redis_client)
    assert "Requeued 1 unacknowledged tasks;" in run("requeue", "--force")
    assert bus_state.unacked_count(redis_client) == 0
    assert waiting("requeue_test", redis_client) == 1
    # And a task the killed worker had taken but not recorded: subscribers send again.
    assert intake_status.send_again_requests(redis_client) == requests_before + 1
    redis_client.delete(*broker_list_keys("requeue_test"))


def test_requeue_refuses_while_workers_are_up(redis_client: Any, all_queue_workers: list[Service]):
    from apps.monitoring.bus_state import read_worker_heartbeats

    wait_for(lambda: read_worker_heartbeats(redis_client), timeout=15, what="worker heartbeats")
    with pytest.raises(CommandError, match="Stop the workers first, or pass --force"):
        call_command("requeue")


def test_tasks_put_back_after_the_visibility_timeout_ask_subscribers_to_send_again(
    redis_client: Any,
):
    """Kombu's own put-back of tasks unacknowledged too long (a dead worker's): that worker may
    also have held a task it had taken but not recorded, so subscribers are asked to re-send."""
    from apps.core.tasks.consumer import RecordingQoS
    from intelliwiz_config.celery import app

    app.send_task("apps.mqtt.tasks.process_device_telemetry", args=[[]], queue="requeue_test")
    _orphan_a_task()
    requests_before = intake_status.send_again_requests(redis_client)
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        assert isinstance(channel.qos, RecordingQoS)
        channel.qos.visibility_timeout = 0  # the orphan's record is now past it
        channel.qos.restore_visible(num=10, interval=1)
    assert bus_state.unacked_count(redis_client) == 0
    assert waiting("requeue_test", redis_client) == 1
    assert intake_status.send_again_requests(redis_client) == requests_before + 1
    redis_client.delete(*broker_list_keys("requeue_test"))
