"""Where a general worker's CPU goes on fleet telemetry: milliseconds per message, and why.

    .venv/bin/python -m bench.profile_worker [--devices 1000] [--tenants 10] [--messages 20000]
                                             [--low-battery 0.05] [--profile [--all-frames]]

Runs in one process what the subscriber and a `general` worker do with a fleet's telemetry,
without MQTT and the Celery broker in between, so the figures are their own CPU:

- intake: each message validated by `Intake.check`, batched by MQTT_BATCH_SIZE and turned into
  a task message body (as `enqueue` writes it);
- worker: each body decoded and run by the telemetry task (the batch runner, the ledger, SQLite
  as `make run` configures it, the outbox and the broadcast to a real Redis channel layer).

A share of the devices (`--low-battery`) report a low battery, so the alert rules raise and
repeat alerts as they would in the field. `--profile` prints pyinstrument's view of the worker.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

# First, before Django reads the settings: free ports, a scratch dir, the settings tests use.
from tests import environment

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
django.setup()

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from kombu.compression import compress, decompress
from kombu.serialization import dumps, loads

from apps.core import gc_tuning, task_json
from apps.core.envelope import Envelope
from apps.mqtt.intake import Intake
from apps.mqtt.tasks import PROCESSING_TASKS
from tests.environment import REDIS_PORT, SCRATCH
from tests.factories import telemetry
from tests.ledger import Fleet
from tests.services import start_redis


def fleet_messages(fleet: Fleet, count: int, low_share: float) -> list[tuple[str, bytes]]:
    """`count` messages round-robin over the fleet; the low-battery devices report 10 %."""
    chooser = random.Random(11)  # noqa: S311 - a reproducible fleet, not a secret
    devices = fleet.devices
    low = set(chooser.sample(devices, int(len(devices) * low_share)))
    return [
        (
            f"device/{device}/telemetry",
            telemetry(battery=10 if device in low else 50, msg_id=f"p-{n}").encode(),
        )
        for n, device in ((n, devices[n % len(devices)]) for n in range(count))
    ]


def intake_stage(
    intake: Intake, messages: list[tuple[str, bytes]]
) -> tuple[list[tuple[Any, ...]], float]:
    """The task message bodies, and the CPU seconds validation and serialisation took."""
    started = time.process_time()
    envelopes = []
    for topic, payload in messages:
        outcome = intake.check(topic, payload)
        assert isinstance(outcome, Envelope), outcome
        envelopes.append(outcome)
    size = settings.MQTT_BATCH_SIZE
    bodies = []
    for batch in (envelopes[i : i + size] for i in range(0, len(envelopes), size)):
        body = dumps([[batch], {}, {}], serializer=task_json.SERIALIZER)  # as enqueue() writes it
        method = task_json.compression_for(len(batch))
        packed = compress(body[2], method) if method else (body[2], None)
        bodies.append((*body, *packed))
    return bodies, time.process_time() - started


class WriteTransactions:
    """How long each write transaction held SQLite's writer lock: from its BEGIN IMMEDIATE to
    the end of its COMMIT (what a critical alert's transaction may have to wait for)."""

    def __init__(self) -> None:
        self.held: list[float] = []
        self._began = 0.0

    def __enter__(self) -> WriteTransactions:
        connection.ensure_connection()
        self._wrapper = connection.execute_wrapper(self._watch)
        self._wrapper.__enter__()
        self._commit = connection.commit
        connection.commit = self._committed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        connection.commit = self._commit  # type: ignore[method-assign]
        self._wrapper.__exit__(*exc)

    def _watch(self, execute: Any, sql: str, *args: Any) -> Any:
        if sql.startswith("BEGIN"):
            self._began = time.perf_counter()
        return execute(sql, *args)

    def _committed(self) -> None:
        self._commit()
        if self._began:
            self.held.append(time.perf_counter() - self._began)
            self._began = 0.0


def worker_stage(bodies: list[tuple[Any, ...]]) -> tuple[float, float, list[float]]:
    """CPU and wall seconds of the telemetry task over every body, and each write transaction's
    hold of the writer lock."""
    task = PROCESSING_TASKS["telemetry"]
    cpu, wall = time.process_time(), time.perf_counter()
    with WriteTransactions() as transactions:
        for content_type, encoding, _, data, compression in bodies:
            data = decompress(data, compression) if compression else data
            args, _kwargs, _embed = loads(data, content_type, encoding)
            result = task.apply(args=args)
            if result.failed():
                raise RuntimeError(f"the telemetry task failed: {result.result!r}")
    return time.process_time() - cpu, time.perf_counter() - wall, transactions.held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000, help="messages before measuring")
    parser.add_argument("--low-battery", type=float, default=0.05, help="share of devices")
    parser.add_argument("--profile", action="store_true", help="pyinstrument the worker stage")
    parser.add_argument("--all-frames", action="store_true", help="with --profile: Django's too")
    args = parser.parse_args()

    redis = start_redis(REDIS_PORT, SCRATCH / "redis")
    try:
        call_command("migrate", verbosity=0)
        fleet = Fleet.create(tenants=args.tenants, devices=args.devices)
        messages = fleet_messages(fleet, args.warmup + args.messages, args.low_battery)
        warmup, measured = messages[: args.warmup], messages[args.warmup :]
        intake = Intake()  # one, as the subscriber has: its directory caches the fleet
        worker_stage(intake_stage(intake, warmup)[0])  # caches, first status changes, alerts

        bodies, intake_cpu = intake_stage(intake, measured)
        gc_tuning.settle()  # as the general pool runs (intelliwiz_config/celery.py)
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        worker_cpu, worker_wall, held = worker_stage(bodies)
        if profiler is not None:
            profiler.stop()

        count = len(measured)
        print(
            f"{count} messages from {args.devices} devices over {args.tenants} tenants, "
            f"batches of {settings.MQTT_BATCH_SIZE}, {args.low_battery:.0%} low battery"
        )
        print(f"  intake (validate + task body): {intake_cpu / count * 1000:.3f} ms CPU/message")
        print(
            f"  worker (decode + task + DB + broadcast): {worker_cpu / count * 1000:.3f} ms "
            f"CPU/message, {count / worker_wall:,.0f} msg/s wall"
        )
        held.sort()
        print(
            f"  writer lock held per batch: median {statistics.median(held) * 1000:.1f} ms, "
            f"max {held[-1] * 1000:.1f} ms ({len(held)} transactions)"
        )
        if profiler is not None:
            print(profiler.output_text(unicode=False, color=False, show_all=args.all_frames))
    finally:
        redis.stop()
        environment.pytest_unconfigure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
