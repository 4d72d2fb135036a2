"""End-to-end benchmark on the stack `make run` starts: `make bench` (`make bench QUICK=1`).

One run, on free ports in a scratch directory, measures:

1. the generator alone (publisher processes, QoS 1, to a topic nobody reads);
2. the limit: the same telemetry load through the broker to a plain paho subscriber that only
   parses JSON (bench/raw_subscriber.py);
3. the pipeline: a fleet of devices over several tenants, published -> validated -> queued ->
   stored -> broadcast -> received by a real NOC WebSocket client per tenant, every message
   held to exactly one effect (tests/ledger.py); 2 and 3 in ROUNDS rounds each, alternated,
   their medians compared;
4. alert latency: panic published -> `critical_alert` on the tenant's WebSocket, p50/p95/p99,
   under background telemetry at 2,000 msg/s (--background-rate) or, if lower, the rate the
   pipeline sustained in 3, and where the time went (ALERT_STAGES);
5. the baseline: the same fleet with one Celery task per MQTT message (MQTT_BATCH_SIZE=1);

with CPU seconds and peak RSS per process kind. Prints a table and writes
bench/results/latest.json; exits 1 when a message was lost or had two effects, or a step failed.
docs/performance.md says how each figure is measured.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# First, before Django reads the settings: free ports, a scratch directory, fresh secrets.
from tests import environment
from tests.services import Service, Stack, wait_for


def quiet_port() -> int:
    """A free port below the kernel's ephemeral range. A port the kernel hands out for `bind(0)`
    (tests/environment.free_port) comes from that range, from which every outgoing connection
    of a busy machine takes its own port too: one took Daphne's in the minute before it bound."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = low - 1 - secrets.randbelow(min(10_000, low - 1025))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return environment.free_port()


# As `make run` configures the stack (scripts/init_env.py writes these into .env), not as the
# test suite tunes it for speed of its own waits.
for _name in (
    "DEVICE_OFFLINE_AFTER",
    "BROADCAST_RESEND_AFTER_SECONDS",
    "TEST_SQLITE_PATH",
    "PROMETHEUS_MULTIPROC_DIR",
):
    os.environ.pop(_name, None)
os.environ.update({"DEVICE_AUTO_REGISTER": "true", "DEVICE_AUTO_REGISTER_TENANT": "demo"})
STACK_ENV = Stack.environment(
    environment.SCRATCH / "var",
    MQTT_CLIENT_ID="bench-subscriber",
    HTTP_PORT=str(quiet_port()),
    MQTT_PORT=str(quiet_port()),
    REDIS_URL=environment.redis_url(quiet_port()),
)
os.environ.update(STACK_ENV)  # this process reads the settings the stack's processes read
os.environ["LOG_LEVEL"] = "WARNING"  # but logs less than they do: its output is the progress

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
django.setup()

from bench import report
from bench.load import Load, LoadError, Message, publish, read_line
from bench.noc_clients import NocClientError, NocClients
from bench.processes import ProcessMonitor, PhaseUsage, supervised_pids
from bench.publisher import Publisher, publish_packet
from tests.factories import operator, panic
from tests.ledger import Effects, Fleet, count_effects, readings

SCRATCH = environment.SCRATCH
WORK = SCRATCH / "bench"
TARGET_BACKGROUND_RATE = 2000
CLOSE_HINTS = (
    "4408: the client fell behind, NOC_MAX_UNACKED_BYTES; 4429: over NOC_MAX_MESSAGES_PER_MINUTE "
    "or NOC_MAX_CONNECTS_PER_MINUTE; 4430: NOC_MAX_SOCKETS_PER_USER; 4401/4403: refused"
)
ALERT_WARMUP_SECONDS = 2.0  # background telemetry alone before the first panic
# An alert's latency in parts, between publish, the subscriber's receipt, the first
# critical_alert frame at the NOC client (the subscriber's provisional one, apps/mqtt/announce.py),
# the worker's creation of its row (in its transaction) and the stored alert's frame.
ALERT_STAGES = (
    "publish -> subscriber",
    "subscriber -> NOC, provisional (registry read, broadcast, Daphne)",
    "subscriber -> alert row (hand-off, queue, writer, lookups)",
    "alert row -> NOC, stored (commit, broadcast, Daphne)",
)


# One run of the limit swung from 11,000 to 14,900 msg/s between runs of the bench on a quiet
# machine, and the machine's speed drifts by 10-20 % within minutes. So the limit and the
# pipeline are measured in ROUNDS rounds each, alternated (limit, pipeline, limit, …), and the
# ratio is of their medians: a slow minute weighs on both alike.
ROUNDS = 3  # odd: each median is one round's


@dataclass(frozen=True)
class Plan:
    devices: int = 1000
    tenants: int = 10
    # The same load for the limit and the pipeline: 100 messages a device, so the pipeline step
    # lasts about 10 s at today's speed, long enough for the batches to reach their steady size
    # and for the NOC's 250 ms telemetry interval, which times the step's end, to weigh little.
    limit_messages: int = 100_000
    pipeline_messages: int = 100_000
    baseline_messages: int = 1_000
    alert_samples: int = 100
    # One panic every ALERT_INTERVAL s, open loop: sparse enough that the alerts themselves do
    # not load the critical queue, so the figure is an alert's wait behind the telemetry.
    alert_interval: float = 0.5
    background_rate: float = TARGET_BACKGROUND_RATE
    generators: int = 4
    stall_seconds: float = 60.0  # no progress for this long: the step failed
    step_deadline: float = 400.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            limit_messages=5_000,
            pipeline_messages=5_000,
            baseline_messages=200,
            alert_samples=20,
            stall_seconds=30.0,
            step_deadline=150.0,
        )


class BenchError(RuntimeError):
    """A step that could not complete; the message says what to check."""


@dataclass
class Throughput:
    rate: float
    seconds: float
    effects: Effects
    usage: PhaseUsage
    generator_rate: float


@dataclass
class Bench:
    plan: Plan
    stack: Stack
    monitor: ProcessMonitor
    fleet: Fleet = field(default_factory=Fleet)
    tokens: dict[int, str] = field(default_factory=dict)
    panic_devices: list[tuple[int, str]] = field(default_factory=list)  # (tenant, device id)
    failures: list[str] = field(default_factory=list)

    @property
    def mqtt_port(self) -> int:
        return int(self.stack.env["MQTT_PORT"])

    # --- setup --------------------------------------------------------------------------------

    def populate(self) -> None:
        """The fleet, a panic button per alert sample, and one NOC operator per tenant."""
        from django.db import transaction

        from apps.devices.services import register_device
        from apps.noc.auth import issue_access_token

        self.fleet = Fleet.create(tenants=self.plan.tenants, devices=self.plan.devices)
        per_tenant = math.ceil(self.plan.alert_samples / self.plan.tenants)
        with transaction.atomic():
            for t, tenant_id in enumerate(self.fleet.tenants):
                from apps.tenants.models import Tenant

                tenant = Tenant.objects.get(pk=tenant_id)
                for k in range(per_tenant):
                    register_device(tenant, f"panic-{t}-{k:03d}", "panic_button")
                user = operator(tenant, f"bench-noc-{t}", password=None)  # a token only
                self.tokens[tenant_id] = issue_access_token(user)
        tenants = list(self.fleet.tenants)
        self.panic_devices = [
            (tenants[i % len(tenants)], f"panic-{i % len(tenants)}-{i // len(tenants):03d}")
            for i in range(self.plan.alert_samples)
        ]

    def track_stack(self) -> None:
        try:
            status = self.stack.supervisorctl("status").stdout
        except subprocess.CalledProcessError as exc:  # exit 3: a program is not running
            status = exc.stdout
        pids = supervised_pids(status)
        missing = {"redis", "mosquitto", "daphne", "beat", "subscriber"} - set(pids)
        if missing:
            raise BenchError(
                f"the stack is not fully running ({', '.join(sorted(missing))} missing): "
                f"`supervisorctl status` says:\n{status}\nlogs: {SCRATCH / 'var' / 'log'}"
            )
        self.monitor.track(pids)

    # --- steps --------------------------------------------------------------------------------

    def generator_alone(self, messages: list[Message]) -> tuple[float, int]:
        """The publishers' own rate: to a topic nobody subscribes to, acknowledged by the broker."""
        moved = [(f"benchgen/{topic.partition('/')[2]}", payload) for topic, payload in messages]
        result = publish(
            self.mqtt_port, moved, WORK, name="generator", processes=self.plan.generators
        )
        return result.rate, result.processes

    def limit(self, messages: list[Message]) -> float:
        """Broker pass-through to a plain paho subscriber that only parses JSON."""
        import json

        from django.conf import settings

        moved = [(f"benchraw/{topic.partition('/')[2]}", payload) for topic, payload in messages]
        raw = subprocess.Popen(
            [
                sys.executable, "-m", "bench.raw_subscriber",
                "--port", str(self.mqtt_port),
                "--topic", "benchraw/#",
                "--expect", str(len(moved)),
                "--receive-maximum", str(settings.MQTT_RECEIVE_MAXIMUM),
                "--timeout", str(self.plan.step_deadline),
            ],
            cwd=report.ROOT, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            if read_line(raw, 60, "subscribing") != "ready":
                raise BenchError("the raw subscriber could not subscribe; see the output above")
            result = publish(
                self.mqtt_port,
                moved,
                WORK,
                name="limit",
                processes=self.plan.generators,
                timeout=self.plan.step_deadline,
            )
            counts = json.loads(read_line(raw, self.plan.step_deadline + 30, "counting"))
        finally:
            if raw.poll() is None:
                raw.kill()
            raw.wait(5)
        if counts["received"] < len(moved) or counts["unparsed"]:
            raise BenchError(
                f"the raw subscriber got {counts['received']} of {len(moved)} messages "
                f"({counts['unparsed']} not JSON): is Mosquitto dropping messages "
                f"(max_queued_messages)? see {SCRATCH / 'var' / 'log' / 'mosquitto.log'}"
            )
        rate: float = counts["received"] / (counts["last"] - result.started)
        return rate

    def throughput(self, name: str, count: int) -> Throughput:
        """Publish `count` fleet messages at once; the rate is until every one is on a NOC."""
        published = self.fleet.telemetry(count, prefix=name)
        load = Load(
            self.mqtt_port,
            published,
            WORK,
            name=name,
            processes=self.plan.generators,
            timeout=self.plan.step_deadline,
        )
        with NocClients(self.stack.http_port, self.tokens) as noc:
            with self.monitor.phase() as usage:
                try:
                    stored_before = readings()
                    started = load.start()
                    completed = self._follow(name, count, noc, started, stored_before)
                    generated = load.wait()
                finally:
                    load.stop()
            done_at = noc.reached_at(count) if completed else time.monotonic()
            seconds = (done_at or time.monotonic()) - started
            if completed:
                self._settle(noc, count)
            effects = count_effects(self.fleet, published, noc, prefix=f"{name}-")
            self._check_clients(noc, name)
        usage.cpu_seconds["generator"] = round(generated.cpu_seconds, 2)
        counted = min(count, sum(effects.broadcast.values()))
        return Throughput(
            rate=counted / seconds,
            seconds=seconds,
            effects=effects,
            usage=usage,
            generator_rate=generated.rate,
        )

    def _follow(
        self,
        name: str,
        count: int,
        noc: NocClients,
        started: float,
        stored_before: int,
        deadline: float = 0,
    ) -> bool:
        """Wait until the NOC clients counted `count` messages; print progress; False if stuck."""

        deadline = deadline or started + self.plan.step_deadline
        last_progress = (time.monotonic(), -1, -1)
        next_print = time.monotonic() + 3
        while True:
            seen = noc.total_telemetry_messages()
            if seen >= count:
                return True
            now = time.monotonic()
            if now >= next_print or now - last_progress[0] > self.plan.stall_seconds:
                stored = readings() - stored_before
                if (seen, stored) != last_progress[1:]:
                    last_progress = (now, seen, stored)
                elif now - last_progress[0] > self.plan.stall_seconds:
                    why = f"no progress for {self.plan.stall_seconds:.0f} s"
                    self._stuck(name, count, seen, stored, why)
                    return False
                print(
                    f"    {name}: {now - started:5.1f} s  stored {stored:>7,}  "
                    f"on the NOC {seen:>7,} / {count:,}  queues {self._queues()}",
                    flush=True,
                )
                next_print = now + 3
            if now > deadline:
                stored = readings() - stored_before
                self._stuck(name, count, seen, stored, f"not done after {now - started:.0f} s")
                return False
            time.sleep(0.02)

    def _stuck(self, name: str, count: int, seen: int, stored: int, why: str) -> None:
        from apps.core.models import DeadLetter

        letters = list(DeadLetter.objects.values_list("reason", "detail")[:3])
        if stored >= count > seen:
            why += " (all stored: the broadcasts or the NOC clients fall short)"
        self.failures.append(
            f"{name}: {why}: {stored:,} of {count:,} stored, {seen:,} counted on the NOC; "
            f"queues {self._queues()}; dead letters {DeadLetter.objects.count()} {letters}. "
            f"Check the logs in {SCRATCH / 'var' / 'log'} (mqtt_subscriber.log, "
            "celery-general.log, daphne.log) and `supervisorctl status` there."
        )

    def _queues(self) -> str:
        from apps.core.redis_client import state_redis
        from apps.monitoring import bus_state

        try:
            stats = bus_state.queue_stats(state_redis())
        except Exception as exc:
            return f"(unreadable: {exc})"
        busy = [f"{q.name}={q.depth}" for q in stats if q.depth]
        return " ".join(busy) or "empty"

    def _settle(self, noc: NocClients, count: int) -> None:
        """After the last count: the queues drain, so late duplicates have time to show."""
        from apps.core.redis_client import state_redis
        from apps.monitoring import bus_state

        def idle() -> bool:
            client = state_redis()
            depth = sum(q.depth for q in bus_state.queue_stats(client))
            return depth == 0 and bus_state.unacked_count(client) == 0

        try:
            wait_for(idle, timeout=30, interval=0.2, what="the queues to drain")
        except TimeoutError as exc:
            self.failures.append(f"{exc}: queues {self._queues()}")

    def _check_clients(self, noc: NocClients, name: str) -> None:
        if noc.closed:
            self.failures.append(
                f"{name}: NOC clients were closed during the run: {noc.closed} ({CLOSE_HINTS}; "
                "see daphne.log)"
            )
        if noc.other_tenants_alerts:
            self.failures.append(
                f"{name}: alerts shown to another tenant: {noc.other_tenants_alerts[:5]}"
            )

    def alerts(self, background_rate: float) -> dict[str, Any]:
        """Panic -> critical_alert on the tenant's NOC, open loop, under background telemetry."""
        from apps.alerts.models import Alert

        plan = self.plan
        interval = plan.alert_interval
        seconds = ALERT_WARMUP_SECONDS + plan.alert_samples * interval + 1
        background = self.fleet.telemetry(int(background_rate * seconds), prefix="bg")
        load = Load(
            self.mqtt_port,
            background,
            WORK,
            name="background",
            processes=plan.generators,
            rate=background_rate,
            timeout=seconds + plan.step_deadline,
        )
        panic_publisher = Publisher(self.mqtt_port, "bench-panic", window=1000)
        sent_at: dict[str, float] = {}
        with NocClients(self.stack.http_port, self.tokens) as noc:
            for tenant in self.fleet.tenants:
                noc.expect_alerts_from(tenant, {d for t, d in self.panic_devices if t == tenant})
            with self.monitor.phase() as usage:
                try:
                    stored_before = readings()
                    started = load.start()
                    for i, (_tenant, device) in enumerate(self.panic_devices):
                        packet = publish_packet(
                            f"alert/{device}/panic", panic(msg_id=f"alert-{i}").encode(), i + 1
                        )
                        due = started + ALERT_WARMUP_SECONDS + i * interval
                        while (wait := due - time.monotonic()) > 0:
                            panic_publisher.pump(min(wait, 0.01))
                        sent_at[device] = time.monotonic()
                        panic_publisher.send(packet)
                        if i % max(1, plan.alert_samples // 4) == 0 and i:
                            print(
                                f"    alerts: {i}/{plan.alert_samples} sent, "
                                f"{sum(1 for d in sent_at if noc.alert_arrival(d))} on the NOC, "
                                f"queues {self._queues()}",
                                flush=True,
                            )
                    # Until every alert arrived, or none for stall_seconds: those are lost.
                    arrived, progress_at = -1, time.monotonic()
                    while arrived < len(sent_at):
                        count = sum(1 for d in sent_at if noc.stored_alert_arrival(d) is not None)
                        if count > arrived:
                            arrived, progress_at = count, time.monotonic()
                        elif time.monotonic() - progress_at > plan.stall_seconds:
                            break
                        panic_publisher.pump(0.01)
                    generated = load.wait()
                finally:
                    load.stop()
                    panic_publisher.close()
            # Background telemetry keeps flowing after the last alert: wait for it to arrive.
            total = len(background)
            kept_up = self._follow(
                "background",
                total,
                noc,
                started,
                stored_before,
                time.monotonic() + plan.step_deadline,
            )
            lag = (noc.reached_at(total) or time.monotonic()) - generated.finished
            if kept_up:
                self._settle(noc, total)
            effects = count_effects(self.fleet, background, noc, prefix="bg-")
            usage.cpu_seconds["generator"] = round(generated.cpu_seconds, 2)
            latencies = [
                arrival - sent_at[d]
                for d in sent_at
                if (arrival := noc.alert_arrival(d)) is not None
            ]
            stored_latencies = [
                arrival - sent_at[d]
                for d in sent_at
                if (arrival := noc.stored_alert_arrival(d)) is not None
            ]
            missing = sorted(d for d in sent_at if noc.stored_alert_arrival(d) is None)
            duplicates = noc.duplicate_alerts()
            self._check_clients(noc, "alerts")
        stages = self._alert_stages(sent_at, noc)
        rows = dict(Alert.objects.filter(source_id__in=sent_at).values_list("source_id", "count"))
        stored_twice = sorted(d for d, n in rows.items() if n != 1)
        not_stored = sorted(set(sent_at) - set(rows))
        if missing:
            self.failures.append(
                f"alerts: {len(missing)} stored critical_alert events never reached the NOC "
                f"(none came for {plan.stall_seconds:.0f} s) "
                f"(e.g. {missing[:5]}); {len(not_stored)} have no alert row: see "
                "celery-critical.log and mqtt_subscriber.log"
            )
        return {
            "latencies": latencies,
            "stored_latencies": stored_latencies,
            "stages": stages,
            "samples": len(sent_at),
            "lost": max(len(missing), len(not_stored)),
            "duplicates": duplicates + len(stored_twice),
            "background": effects,
            "background_generated_rate": generated.rate,
            "background_lag_s": round(lag, 2),
            "background_kept_up": kept_up and lag < 2.0,
            "usage": usage,
        }

    def _alert_stages(self, sent_at: dict[str, float], noc: NocClients) -> dict[str, list[float]]:
        """Where each alert's time went, in seconds, from what the stack records anyway: when the
        subscriber received it (`mqtt_subscriber:last_received`, one message per panic button)
        and when the worker created its row (`Alert.created_at`, inside its transaction). One
        host, one wall clock; the bench's monotonic times are put on it."""
        from apps.alerts.models import Alert
        from apps.core.intake_status import last_received
        from apps.core.redis_client import state_redis

        to_wall = time.time() - time.monotonic()
        received = last_received(state_redis(), list(sent_at))
        created = {
            source: at.timestamp()
            for source, at in Alert.objects.filter(source_id__in=sent_at).values_list(
                "source_id", "created_at"
            )
        }
        stages: dict[str, list[float]] = {stage: [] for stage in ALERT_STAGES}
        for device, sent in sent_at.items():
            first, stored = noc.alert_arrival(device), noc.stored_alert_arrival(device)
            if first is None or stored is None or device not in received or device not in created:
                continue
            spans = [
                (sent + to_wall, received[device]),
                (received[device], first + to_wall),
                (received[device], created[device]),
                (created[device], stored + to_wall),
            ]
            for stage, (start, end) in zip(ALERT_STAGES, spans, strict=True):
                stages[stage].append(max(0.0, end - start))
        return stages

    def baseline_subscriber(self) -> Service:
        """The stack's subscriber, its own program's command line, with MQTT_BATCH_SIZE=1 (and
        MQTT_BATCH_MAX_SIZE=1: a task per message even while the queue is backed up)."""
        from django.conf import settings

        from apps.monitoring import stack as stack_module

        program = next(
            p
            for p in stack_module.programs(stack_module.StackPaths(Path(settings.VAR_DIR)))
            if p.name == "mqtt_subscriber"
        )
        self.stack.supervisorctl("stop", "mqtt_subscriber")
        env = {
            **self.stack.env,
            "PYTHONUNBUFFERED": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(settings.PROMETHEUS_MULTIPROC_DIR),
            "MQTT_BATCH_SIZE": "1",
            "MQTT_BATCH_MAX_SIZE": "1",
        }
        log_path = SCRATCH / "var" / "log" / "mqtt_subscriber-baseline.log"
        service = Service("subscriber-baseline", program.command, log_path, env=env)
        wait_for(
            lambda: "Subscribed to device topics" in service.log(),
            timeout=60,
            what=f"the baseline subscriber to subscribe (its log: {log_path})",
        )
        self.monitor.pids["subscriber"] = service.pid
        return service


def _cpu_per_message(usage: PhaseUsage, messages: int) -> dict[str, float]:
    return {kind: round(1000 * s / max(messages, 1), 3) for kind, s in usage.cpu_seconds.items()}


def _print_stages(stages: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    summary = {stage: report.latency_summary(times) for stage, times in stages.items()}
    for stage, figures in summary.items():
        print(f"        {stage}: p50 {figures['p50']} / p95 {figures['p95']} ms", flush=True)
    return summary


def run_alerts_only(bench: Bench, started: float) -> bool:
    """`--only-alerts`: the stack, the fleet and the alert step at --background-rate; nothing
    written to latest.json (its other figures would be missing)."""
    plan = bench.plan
    print(f"[1/2 {time.monotonic() - started:4.0f} s] fleet: {plan.devices:,} devices", flush=True)
    bench.populate()
    print(
        f"[2/2 {time.monotonic() - started:4.0f} s] alert latency: {plan.alert_samples} panics, "
        f"one every {plan.alert_interval} s, under {plan.background_rate:,.0f} msg/s",
        flush=True,
    )
    alerts = bench.alerts(plan.background_rate)
    latency = report.latency_summary(alerts["latencies"])
    background: Effects = alerts["background"]
    print(
        f"      p50 {latency['p50']} / p95 {latency['p95']} / p99 {latency['p99']} / "
        f"max {latency['max']} ms over {alerts['samples']} samples; background "
        f"{alerts['background_generated_rate']:,.0f} msg/s generated, kept up: "
        f"{alerts['background_kept_up']} (lag {alerts['background_lag_s']} s); lost "
        f"{alerts['lost'] + background.lost_count}, duplicate effects "
        f"{alerts['duplicates'] + background.duplicate_count}",
        flush=True,
    )
    stored = report.latency_summary(alerts["stored_latencies"])
    print(
        f"      stored alert (with its id): p50 {stored['p50']} / p95 {stored['p95']} / "
        f"p99 {stored['p99']} ms",
        flush=True,
    )
    _print_stages(alerts["stages"])
    if background.lost_count or background.duplicate_count or background.dead_letters:
        bench.failures.append(
            f"background: {background.lost_count} lost, {background.duplicate_count} duplicate "
            f"effects, dead letters {background.dead_letters}"
        )
    return not bench.failures


def measure_all(
    bench: Bench, started: float, step: Any, machine: dict[str, Any], quick: bool
) -> bool:
    """Steps 2-6 on a healthy stack; True when none failed."""
    plan, monitor = bench.plan, bench.monitor
    step(2, f"fleet: {plan.devices:,} devices over {plan.tenants} tenants")
    bench.populate()
    sample = bench.fleet.telemetry(plan.limit_messages, prefix="raw")

    step(3, "the generator alone")
    generator_rate, processes = bench.generator_alone(sample)
    print(f"      {generator_rate:,.0f} msg/s from {processes} processes", flush=True)

    step(
        4,
        f"the limit (broker -> plain paho subscriber, parse only) and the pipeline "
        f"({plan.pipeline_messages:,} messages, full stack), {ROUNDS} rounds each, alternated",
    )
    limit_runs: list[float] = []
    pipelines: list[Throughput] = []
    for round_number in range(1, ROUNDS + 1):
        limit_runs.append(bench.limit(sample))
        pipelines.append(bench.throughput(f"pipe{round_number}", plan.pipeline_messages))
        print(
            f"      round {round_number}: limit {limit_runs[-1]:,.0f} msg/s, "
            f"pipeline {pipelines[-1].rate:,.0f} msg/s",
            flush=True,
        )
    limit_rate = statistics.median(limit_runs)
    pipeline = sorted(pipelines, key=lambda run: run.rate)[len(pipelines) // 2]  # the median
    print(
        f"      medians: limit {limit_rate:,.0f} msg/s, pipeline {pipeline.rate:,.0f} msg/s",
        flush=True,
    )
    if generator_rate < 1.5 * limit_rate:
        bench.failures.append(
            f"the generator ({generator_rate:,.0f} msg/s) is not well above the limit "
            f"({limit_rate:,.0f} msg/s): the limit may be the generator's; raise --generators"
        )

    if pipeline.rate >= plan.background_rate:
        background_rate, source = plan.background_rate, "target"
    else:
        background_rate, source = math.floor(pipeline.rate), "sustained max"
    step(
        5,
        f"alert latency: {plan.alert_samples} panics, one every {plan.alert_interval} s, "
        f"under {background_rate:,.0f} msg/s of telemetry ({source})",
    )
    alerts = bench.alerts(background_rate)
    latency = report.latency_summary(alerts["latencies"])
    stored = report.latency_summary(alerts["stored_latencies"])
    print(
        f"      p50 {latency['p50']} ms, p99 {latency['p99']} ms; the stored alert: "
        f"p50 {stored['p50']} ms, p99 {stored['p99']} ms",
        flush=True,
    )
    stages = _print_stages(alerts["stages"])

    step(6, f"baseline: {plan.baseline_messages:,} messages, a task per message")
    subscriber = bench.baseline_subscriber()
    try:
        baseline = bench.throughput("base", plan.baseline_messages)
    finally:
        subscriber.stop()
    print(f"      {baseline.rate:,.0f} msg/s", flush=True)

    runs = [*(run.effects for run in pipelines), baseline.effects, alerts["background"]]
    names = [f"pipeline round {n}" for n in range(1, ROUNDS + 1)] + ["baseline", "background"]
    lost = sum(e.lost_count for e in runs) + alerts["lost"]
    duplicates = sum(e.duplicate_count for e in runs) + alerts["duplicates"]
    for effects, name in zip(runs, names, strict=True):
        if effects.lost_count or effects.duplicate_count or effects.dead_letters:
            bench.failures.append(
                f"{name}: {effects.lost_count} lost (not stored: {effects.lost[:5]}, "
                f"never broadcast: {effects.broadcast_missing}), "
                f"{effects.duplicate_count} duplicate effects (stored twice: "
                f"{effects.twice[:5]}, broadcast again: {effects.broadcast_extra}), "
                f"dead letters {effects.dead_letters}"
            )
    if monitor.restarts:
        bench.failures.append(f"processes restarted during the run: {monitor.restarts}")

    usages = {"pipeline": pipeline.usage, "alerts": alerts["usage"], "baseline": baseline.usage}
    results: dict[str, Any] = {
        "date": report.now(),
        "git_commit": report.git_commit(),
        "quick": quick,
        "ok": not bench.failures,
        "failures": bench.failures,
        "devices": plan.devices,
        "tenants": plan.tenants,
        "noc_clients": len(bench.tokens),
        "generator_msgs_per_s": round(generator_rate),
        "generator_processes": processes,
        "limit_msgs_per_s": round(limit_rate),
        "limit_runs_msgs_per_s": [round(rate) for rate in limit_runs],
        "limit_messages": plan.limit_messages,
        "pipeline_msgs_per_s": round(pipeline.rate),
        "pipeline_runs_msgs_per_s": [round(run.rate) for run in pipelines],
        "pipeline_messages": plan.pipeline_messages,
        "pipeline_seconds": round(pipeline.seconds, 1),
        "pipeline_generator_msgs_per_s": round(pipeline.generator_rate),
        "baseline_msgs_per_s": round(baseline.rate),
        "baseline_messages": plan.baseline_messages,
        "baseline_seconds": round(baseline.seconds, 1),
        "ratio_to_limit": round(pipeline.rate / limit_rate, 3),
        "ratio_to_baseline": round(pipeline.rate / max(baseline.rate, 1e-9), 2),
        "alert_latency_ms": {
            **latency,
            "samples": alerts["samples"],
            "background_msgs_per_s": background_rate,
            "background_rate_source": source,
            "background_generated_msgs_per_s": round(alerts["background_generated_rate"]),
            "background_kept_up": alerts["background_kept_up"],
            "background_lag_s": alerts["background_lag_s"],
            "stages": stages,
        },
        "alert_stored_latency_ms": stored,
        "lost": lost,
        "duplicate_effects": duplicates,
        "cpu_seconds": {name: u.cpu_seconds for name, u in usages.items()},
        "cpu_ms_per_message": {
            "pipeline": _cpu_per_message(pipeline.usage, plan.pipeline_messages),
            "baseline": _cpu_per_message(baseline.usage, plan.baseline_messages),
        },
        "peak_rss_mb": {kind: round(b / 2**20, 1) for kind, b in monitor.peak_rss.items()},
        "settings": _settings(),
        "machine": machine,
        "duration_s": round(time.monotonic() - started),
    }
    path = report.write(results)
    print("\n" + report.table(results) + "\n", flush=True)
    print(f"Written to {path.relative_to(report.ROOT)} in {results['duration_s']} s.")
    return not bench.failures


def run(plan: Plan, quick: bool, only_alerts: bool = False) -> int:
    started = time.monotonic()

    def step(n: int, what: str) -> None:
        print(f"[{n}/6 {time.monotonic() - started:4.0f} s] {what} …", flush=True)

    machine = report.machine()
    print(
        f"make bench{' QUICK=1' if quick else ''}: {machine['cores']} cores, "
        f"{machine['cpu_model']}, load average {machine['load_average_at_start']} "
        f"(figures from a shared machine are noisy)\nScratch: {SCRATCH}",
        flush=True,
    )
    stack = Stack(SCRATCH / "var", SCRATCH / "stack.log", **STACK_ENV)
    monitor = ProcessMonitor()
    bench = Bench(plan, stack, monitor)
    ok = False
    try:
        step(1, "starting the stack as `make run` does (manage.py runstack)")
        try:
            stack.wait_healthy(timeout=180)
        except AssertionError:
            raise BenchError(
                "the stack did not become healthy within 180 s; the end of its output:\n"
                f"{stack.log()[-3000:]}\nevery service's log: {SCRATCH / 'var' / 'log'}"
            ) from None
        bench.track_stack()
        monitor.start()
        print(f"      healthy after {time.monotonic() - started:.0f} s", flush=True)
        if only_alerts:
            ok = run_alerts_only(bench, started)
        else:
            ok = measure_all(bench, started, step, machine, quick)
    except (BenchError, LoadError, NocClientError, TimeoutError, AssertionError) as exc:
        bench.failures.append(str(exc))
    finally:
        try:
            monitor.stop()
        finally:
            print("Stopping the stack …", flush=True)
            stack.stop(timeout=60)
    if not ok:
        print("\nFAILED:", file=sys.stderr)
        for failure in bench.failures:
            print(f"  - {failure}", file=sys.stderr)
        environment.keep_scratch()
        print(f"Logs kept in {SCRATCH} (var/log/ holds each service's).", file=sys.stderr)
    environment.pytest_unconfigure()
    return 0 if ok else 1


def _settings() -> dict[str, Any]:
    """The settings that shape the figures, as the stack ran with them."""
    from django.conf import settings

    from apps.core.tasks.celery_settings import QUEUES

    names = (
        "MQTT_BATCH_SIZE",
        "MQTT_BATCH_MAX_SIZE",
        "MQTT_BATCH_INTERVAL_MS",
        "MQTT_RECEIVE_MAXIMUM",
        "NOC_TELEMETRY_MIN_INTERVAL_MS",
        "DEBUG",
    )
    return {
        **{name.lower(): getattr(settings, name) for name in names},
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "worker_concurrency": {q.name: q.concurrency for q in QUEUES},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and samples")
    defaults = Plan()
    parser.add_argument("--devices", type=int)
    parser.add_argument("--tenants", type=int)
    parser.add_argument("--messages", type=int, help="pipeline (and limit) messages")
    parser.add_argument("--baseline-messages", type=int)
    parser.add_argument("--alerts", type=int, help="alert latency samples")
    parser.add_argument("--alert-interval", type=float, help="seconds between two panics")
    parser.add_argument(
        "--background-rate",
        type=float,
        help=f"telemetry msg/s under the alerts (default {defaults.background_rate:.0f}, "
        "or the pipeline's sustained maximum if lower)",
    )
    parser.add_argument("--generators", type=int, help="publisher processes")
    parser.add_argument(
        "--only-alerts",
        action="store_true",
        help="start the stack and run the alert step alone, at --background-rate (or its "
        "default) whatever the pipeline sustains; prints the figures, writes no latest.json",
    )
    args = parser.parse_args()
    plan = Plan.quick() if args.quick else defaults
    overrides = {
        "devices": args.devices,
        "tenants": args.tenants,
        "pipeline_messages": args.messages,
        "limit_messages": args.messages,
        "baseline_messages": args.baseline_messages,
        "alert_samples": args.alerts,
        "alert_interval": args.alert_interval,
        "background_rate": args.background_rate,
        "generators": args.generators,
    }
    plan = Plan(**{**plan.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    return run(plan, args.quick, only_alerts=args.only_alerts)


if __name__ == "__main__":
    sys.exit(main())
