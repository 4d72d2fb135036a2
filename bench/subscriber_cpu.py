"""CPU the MQTT subscriber spends per message, on its own: the routine lane against a real
Mosquitto and Redis (no workers), fed the bench's QoS 1 telemetry from 1,000 devices.

    .venv/bin/python -m bench.subscriber_cpu [--messages 20000] [--rounds 3] [TREE ...]

Each TREE is a checkout of this repository (default: this one) whose subscriber is measured;
the trees take turns within each round, so a comparison shares the machine's load of the
moment. For each, a fresh `manage.py mqtt_subscriber --lane routine` is warmed up on 1,000
messages, then timed on `--messages`: its CPU seconds (psutil, user + system) from just before
the publishers start to the moment it has handed the last message to Redis, per message.
Prints one line per run and a summary (min / median / max per tree).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

from tests import environment  # first: free ports, a scratch dir and the settings, before Django

ROOT = Path(__file__).resolve().parent.parent
WARMUP_MESSAGES = 1000


def _setup_django() -> None:
    import django
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
    django.setup()
    call_command("migrate", verbosity=0)


def _enqueued() -> float:
    from tests.services import metric

    return metric("mqtt_messages_enqueued_total", queue="general")


def _drop_queued_tasks() -> None:
    from apps.core.redis_client import state_redis
    from apps.core.tasks.celery_settings import broker_list_keys

    client = state_redis()
    client.delete(*broker_list_keys("general"))


def measure(tree: Path, fleet: object, count: int, ids: itertools.count[int]) -> float:
    """ms of subscriber CPU per message for one run of the subscriber in `tree`."""
    from bench.load import publish
    from tests.services import wait_for

    client_id = f"cpu-bench-{next(ids)}"
    log_path = environment.SCRATCH / "log" / f"{client_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        subscriber = subprocess.Popen(
            [sys.executable, "manage.py", "mqtt_subscriber", "--lane", "routine"],
            cwd=tree,
            env={**os.environ, "LOG_LEVEL": "INFO", "MQTT_CLIENT_ID": client_id},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "Subscribed to device topics" in log_path.read_text(),
            timeout=60,
            what=f"the subscriber of {tree} to subscribe",
        )
        workdir = environment.SCRATCH / "load" / client_id
        process = psutil.Process(subscriber.pid)

        def run(messages: list[tuple[str, str]]) -> float:
            before_count = _enqueued()
            before = process.cpu_times()
            publish(environment.MQTT_PORT, messages, workdir, name=f"n{len(messages)}")
            wait_for(
                lambda: _enqueued() - before_count >= len(messages),
                timeout=300,
                interval=0.02,
                what="the subscriber to hand every message on",
            )
            after = process.cpu_times()
            _drop_queued_tasks()
            return (after.user + after.system) - (before.user + before.system)

        run(fleet.telemetry(WARMUP_MESSAGES, prefix=f"{client_id}-warm"))  # type: ignore[attr-defined]
        seconds = run(fleet.telemetry(count, prefix=client_id))  # type: ignore[attr-defined]
        return seconds * 1000 / count
    finally:
        subscriber.terminate()
        subscriber.wait(30)


def measure_raw(fleet: object, count: int, ids: itertools.count[int]) -> float:
    """The same for bench's limit, bench/raw_subscriber.py (paho, json.loads, auto-ack)."""
    from bench.load import publish, read_line

    name = f"raw-{next(ids)}"
    messages = [
        ("rawcpu/" + topic, body)
        for topic, body in fleet.telemetry(count, prefix=name)  # type: ignore[attr-defined]
    ]
    raw = subprocess.Popen(
        [sys.executable, "-m", "bench.raw_subscriber", "--port", str(environment.MQTT_PORT),
         "--topic", "rawcpu/#", "--expect", str(count)],
        cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    if read_line(raw, 60, "subscribing") != "ready":
        raise RuntimeError("the raw subscriber could not subscribe")
    before = psutil.Process(raw.pid).cpu_times()
    publish(environment.MQTT_PORT, messages, environment.SCRATCH / "load" / name, name=name)
    read_line(raw, 300, "counting")
    _pid, _status, usage = os.wait4(raw.pid, 0)  # its whole life; less what it spent starting
    seconds = usage.ru_utime + usage.ru_stime - before.user - before.system
    return seconds * 1000 / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--raw", action="store_true", help="measure bench/raw_subscriber.py (the limit) too"
    )
    args = parser.parse_args()

    from tests.ledger import Fleet
    from tests.services import start_mosquitto, start_redis

    redis_server = start_redis(environment.REDIS_PORT, environment.SCRATCH / "redis")
    broker = start_mosquitto(environment.MQTT_PORT, environment.SCRATCH / "mosquitto")
    try:
        _setup_django()
        fleet = Fleet.create(tenants=10, devices=1000)
        ids = itertools.count(1)
        results: dict[Path | str, list[float]] = {tree: [] for tree in args.trees}
        for round_ in range(args.rounds):
            if args.raw:
                ms = measure_raw(fleet, args.messages, ids)
                results.setdefault("raw_subscriber (the limit)", []).append(ms)
                print(f"round {round_ + 1} raw_subscriber: {ms:.3f} ms CPU per message", flush=True)
            for tree in args.trees:
                ms = measure(tree, fleet, args.messages, ids)
                results[tree].append(ms)
                print(f"round {round_ + 1} {tree}: {ms:.3f} ms CPU per message", flush=True)
        for tree, values in results.items():
            print(
                f"{tree}: min {min(values):.3f} median {statistics.median(values):.3f} "
                f"max {max(values):.3f} ms/msg over {len(values)} runs"
            )
    finally:
        broker.stop()
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
