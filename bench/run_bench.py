"""End-to-end benchmark: MQTT publish → subscriber → Celery → database, on real services.

    make bench            (or: .venv/bin/python -m bench.run_bench --messages 5000)

Throughput is reported as a ratio against a baseline measured in the same run on the same
machine: the baseline hands every MQTT message to Celery as its own task (MQTT_BATCH_SIZE=1),
the measured configuration uses the settings' micro-batching. Alert latency (publish → alert
row) is reported as percentiles. Results are also written to var/bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# First, before Django reads the settings: free ports, a scratch dir, the settings tests use.
from tests import environment

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
django.setup()

from django.core.management import call_command

from tests.environment import MQTT_PORT, REDIS_PORT, SCRATCH
from tests.factories import create_tenant_with_devices, panic, telemetry
from tests.services import (
    Service,
    mqtt_publish,
    python_service,
    start_mosquitto,
    start_redis,
    wait_for,
    worker_answers,
)

RESULTS = Path(__file__).resolve().parent.parent / "var" / "bench" / "results.json"


def start_subscriber(name: str, **env: str) -> Service:
    service = python_service(
        name,
        ["manage.py", "mqtt_subscriber"],
        SCRATCH / "log" / f"{name}.log",
        env={**os.environ, "LOG_LEVEL": "INFO", "MQTT_CLIENT_ID": name, **env},
    )
    wait_for(lambda: "Subscribed to device topics" in service.log(), timeout=30, what=name)
    return service


def start_worker(queue: str) -> Service:
    service = python_service(
        f"worker-{queue}", ["-m", "apps.core.worker", queue], SCRATCH / "log" / f"{queue}.log"
    )
    node = f"{queue}@{socket.gethostname()}"
    wait_for(lambda: worker_answers(node), timeout=60, what=f"worker {node}")
    return service


def measure_throughput(label: str, count: int, **env: str) -> float:
    from apps.devices.models import TelemetryReading

    before = TelemetryReading.objects.count()
    subscriber = start_subscriber(f"bench-{label}", **env)
    try:
        messages = [
            ("device/bench-1/telemetry", telemetry(msg_id=f"{label}-{i}")) for i in range(count)
        ]
        started = time.perf_counter()
        mqtt_publish(MQTT_PORT, messages, timeout=600)
        wait_for(
            lambda: TelemetryReading.objects.count() - before >= count,
            timeout=900,
            interval=0.05,
            what=f"{count} readings ({label})",
        )
        elapsed = time.perf_counter() - started
    finally:
        subscriber.stop()
    rate = count / elapsed
    print(f"  {label:<28} {count:>6} messages in {elapsed:6.2f} s = {rate:8.0f} msg/s")
    return rate


def measure_alert_latency(samples: int) -> list[float]:
    from apps.alerts.models import Alert

    subscriber = start_subscriber("bench-alerts")
    latencies = []
    try:
        for i in range(samples):
            source = f"panic-{i % 10}"
            before = (
                Alert.objects.filter(source_id=source).values_list("count", flat=True).first() or 0
            )
            started = time.perf_counter()
            mqtt_publish(MQTT_PORT, [(f"alert/{source}/panic", panic(msg_id=f"lat-{i}"))])
            wait_for(
                lambda s=source, b=before: (
                    (Alert.objects.filter(source_id=s).values_list("count", flat=True).first() or 0)
                    > b
                ),
                timeout=30,
                interval=0.002,
                what="the alert row",
            )
            latencies.append(time.perf_counter() - started)
    finally:
        subscriber.stop()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--alerts", type=int, default=50)
    args = parser.parse_args()

    print(f"Starting Redis :{REDIS_PORT}, Mosquitto :{MQTT_PORT}, workers (scratch {SCRATCH})")
    services = [
        start_redis(REDIS_PORT, SCRATCH / "redis"),
        start_mosquitto(MQTT_PORT, SCRATCH / "mosquitto"),
    ]
    try:
        call_command("migrate", verbosity=0)
        create_tenant_with_devices("bench", "bench-1", *(f"panic-{i}" for i in range(10)))
        services += [start_worker("general"), start_worker("critical")]

        print("Throughput, MQTT publish to stored reading (one general worker):")
        baseline = measure_throughput(
            "baseline: a task per message", args.messages, MQTT_BATCH_SIZE="1"
        )
        batched = measure_throughput("micro-batched (settings)", args.messages)
        ratio = batched / baseline
        print(f"  ratio micro-batched / baseline: {ratio:.2f}x")

        print(f"Alert latency, MQTT publish to alert row ({args.alerts} samples):")
        latencies = sorted(measure_alert_latency(args.alerts))
        p50 = statistics.median(latencies)
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(
            f"  p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        )
        results: dict[str, Any] = {
            "messages": args.messages,
            "baseline_msgs_per_s": round(baseline),
            "batched_msgs_per_s": round(batched),
            "throughput_ratio": round(ratio, 2),
            "alert_latency_ms": {"p50": round(p50 * 1000), "p95": round(p95 * 1000)},
            "cpus": os.cpu_count(),
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"Written to {RESULTS}")
    finally:
        for service in reversed(services):
            service.stop()
        environment.pytest_unconfigure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
