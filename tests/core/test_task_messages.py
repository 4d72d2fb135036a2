"""What a task message the subscriber hands on carries in its headers, read from a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from apps.core import task_json
from apps.core.envelope import Envelope
from tests.environment import free_port, redis_url
from tests.services import ROOT, queued_task_args, start_redis

ENQUEUE = """
import django
django.setup()
from apps.core.envelope import Envelope
from apps.core.tasks.base import enqueue
from apps.core.tasks.celery_settings import PROCESS_DEVICE_TELEMETRY
envelopes = [
    Envelope(
        kind="telemetry",
        topic="device/cam-7/telemetry",
        source_id="cam-7",
        payload={"battery": 50, "note": "door code 4711", "msg_id": f"m-{n}"},
        key=f"cam-7:m-{n}",
        received_at=1.0,
    )
    for n in range(COUNT)
]
print(enqueue(PROCESS_DEVICE_TELEMETRY, envelopes).name)
"""


RETRY = """
import django
django.setup()
from celery.exceptions import Retry
from apps.core.tasks.base import retry_later
from apps.mqtt.tasks import PROCESSING_TASKS
task = PROCESSING_TASKS["telemetry"]
batch = [{"key": f"cam-7:m-{n}", "payload": {"note": "door code 4711"}} for n in range(COUNT)]
task.push_request(args=[batch], kwargs={}, id="first-delivery", retries=0, called_directly=False)
try:
    retry_later(task, RuntimeError("database is locked"), 30)
except Retry:
    print("general")
"""


def enqueue(count: int) -> str:
    """The script that hands `count` telemetry envelopes on, as the subscriber does."""
    return ENQUEUE.replace("COUNT", str(count))


def retry(count: int) -> str:
    """The script that retries a delivery of `count` telemetry messages, as a failed batch does."""
    return RETRY.replace("COUNT", str(count))


def waiting_messages(tmp_path: Path, script: str) -> list[bytes]:
    """What `script` leaves in the queues of a Redis of its own (no worker of the session takes
    it before it is read here)."""
    port = free_port()
    redis_server = start_redis(port, tmp_path / "redis")
    try:
        env = {**os.environ, "REDIS_URL": redis_url(port)}
        queue = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()[-1]
        import redis

        client = redis.Redis.from_url(redis_url(port))
        waiting = [m for key in client.keys(f"{queue}*") for m in client.lrange(key, 0, -1)]
        client.close()
    finally:
        redis_server.stop()
    return waiting


def test_a_handed_on_batch_shows_its_count_in_the_task_headers_never_the_device_payloads(
    tmp_path: Path,
):
    waiting = waiting_messages(tmp_path, enqueue(3))

    assert len(waiting) == 1
    message = json.loads(waiting[0])
    headers = message["headers"]
    assert headers["argsrepr"] == "[<3 messages>]"
    assert headers["kwargsrepr"] == "{}"
    assert "4711" not in json.dumps(headers)
    # The body still carries every message, whole.
    (batch,) = queued_task_args(waiting[0])
    assert [m["payload"]["note"] for m in batch] == ["door code 4711"] * 3


def test_a_retried_batch_shows_its_count_too(tmp_path: Path):
    # Celery rebuilds a retry from the request, which keeps no argsrepr of its own.
    (retried,) = waiting_messages(tmp_path, retry(3))

    headers = json.loads(retried)["headers"]
    assert headers["retries"] == 1
    assert headers["argsrepr"] == "[<3 messages>]"
    assert "4711" not in json.dumps(headers)


def test_a_large_batch_waits_compressed_and_reads_back_whole_a_small_one_as_it_is(
    tmp_path: Path,
):
    count = task_json.COMPRESS_FROM_MESSAGES
    (large,) = waiting_messages(tmp_path / "large", enqueue(count))
    (small,) = waiting_messages(tmp_path / "small", enqueue(count - 1))

    assert json.loads(large)["headers"]["compression"] == "application/x-gzip"
    assert "compression" not in json.loads(small)["headers"]
    (batch,) = queued_task_args(large)
    assert [m["payload"]["msg_id"] for m in batch] == [f"m-{n}" for n in range(count)]
    assert len(large) < len(small) / 3  # one message more, a fraction of the bytes


def test_a_large_batch_s_retry_waits_compressed_as_its_first_sending_did(tmp_path: Path):
    count = task_json.COMPRESS_FROM_MESSAGES
    (retried,) = waiting_messages(tmp_path, retry(count))

    message = json.loads(retried)
    assert message["headers"]["retries"] == 1
    assert message["headers"]["compression"] == "application/x-gzip"
    assert message["content-type"] == task_json.CONTENT_TYPE
    (batch,) = queued_task_args(retried)
    assert [m["key"] for m in batch] == [f"cam-7:m-{n}" for n in range(count)]


def test_the_codec_writes_an_envelope_as_its_message_field_for_field():
    # enqueue() and the hand-off record put envelopes in the body as they are.
    envelope = Envelope(
        key="20261204T101500.000001Z|device/cam-7/telemetry#m-1",
        topic="device/cam-7/telemetry",
        source_id="cam-7",
        kind="telemetry",
        payload={"battery": 50.5, "note": 'ß \u2028 \\ "', "nested": {"a": [1, None]}},
        received_at=1764842100.123456,
    )
    written = task_json.dumps([[envelope], {}])
    assert written == task_json.dumps([[envelope.to_message()], {}])
    assert list(json.loads(written)[0][0]) == list(envelope.to_message())  # the same order
    assert Envelope.from_message(task_json.loads(written)[0][0]) == envelope
