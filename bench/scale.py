"""Scale figures (issue 11, item 4), on the stack `make run` starts, on free ports:

1. NOC WebSocket clients on the one Daphne process: Daphne's RSS before and after connecting
   them (spread over tenants, authenticated as the NOC does it: a JWT in the Authorization
   header, several users so no per-user limit is bent); its RSS again after each tenant's clients
   were shown --stream events (steady state), with Daphne's CPU per event; each client checked
   to receive exactly its own tenant's critical alerts, each once as the subscriber's provisional
   frame and once as the stored alert (publish → first frame at the client, and broadcast →
   client for Daphne's part); then a client that stops reading while a colleague takes a flood: the
   colleague gets every event, the stalled one is closed (4408) and counted.
2. A fleet of simulated devices, each its own MQTT connection, reporting every --interval
   seconds, held for a soak: the RSS of every stack process sampled every 10 s, the pipeline's
   backlog, and at the end every acknowledged message stored exactly once.

    make bench-scale                                  # the issue's figures (about 10 minutes)
    make bench-scale SCALE_ARGS="--devices 2000 --soak 60"

The defaults are the issue's: 1,000 clients over 10 tenants, 10,000 devices every 10 s, a
5-minute soak after a 1-minute warm-up. Results go to var/bench/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "bench" / "scale.json"
SAMPLE_SECONDS = 10
DEVICES_PER_PROCESS = 2000
SOCKETS_PER_USER = 5  # half of NOC_MAX_SOCKETS_PER_USER: the limit is never what is measured


def raise_file_limit() -> int:
    """Let this process hold as many sockets as the hard limit allows."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- the device fleet: `python -m bench.scale devices …`, one process per ~2,000 devices ---------


@dataclass
class FleetStatus:
    connected: int = 0
    published: int = 0
    acked: int = 0
    disconnects: int = 0
    refused: int = 0
    done: bool = False


def telemetry_payload(device_id: str, number: int) -> str:
    return json.dumps(
        {
            "battery": 50 + number % 50,
            "signal": -65,
            "temperature": 25.5,
            "timestamp": datetime.now(tz=UTC).isoformat(),
            "msg_id": f"{device_id}-{number}",
        }
    )


async def run_devices(ids: list[str], port: int, interval: float, status_path: Path) -> None:
    """Hold one MQTT connection per device id on this event loop (paho driven by asyncio's
    reader/writer callbacks) and publish a QoS 1 reading from each every `interval` seconds,
    each device at its own phase. On SIGTERM: stop publishing, wait for every acknowledgement,
    disconnect."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    status = FleetStatus()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    pending_connacks = 0

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        nonlocal pending_connacks
        pending_connacks -= 1
        if reason.is_failure:
            status.refused += 1
        else:
            status.connected += 1

    def on_disconnect(client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        status.connected -= 1
        if not stopping.is_set():
            status.disconnects += 1
            loop.call_later(1, client.reconnect)

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, _reason: Any, _p: Any) -> None:
        status.acked += 1

    def client_for(device_id: str) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=True)
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_socket_open = lambda c, _u, sock: loop.add_reader(sock, c.loop_read)
        client.on_socket_close = lambda _c, _u, sock: loop.remove_reader(sock)
        client.on_socket_register_write = lambda c, _u, sock: loop.add_writer(sock, c.loop_write)
        client.on_socket_unregister_write = lambda _c, _u, sock: loop.remove_writer(sock)
        return client

    def write_status() -> None:
        temporary = status_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status.__dict__))
        temporary.replace(status_path)

    async def keep_alive(clients: list[mqtt.Client]) -> None:
        while True:
            for client in clients:
                client.loop_misc()
            write_status()
            await asyncio.sleep(2)

    async def report(device_id: str, client: mqtt.Client) -> None:
        pause = random.uniform(0, interval)  # noqa: S311 (each device's phase, not a secret)
        number = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
            if stopping.is_set():
                return
            client.publish(f"device/{device_id}/telemetry", telemetry_payload(device_id, number), 1)
            status.published += 1
            number += 1
            pause = interval

    clients = []
    for device_id in ids:
        while pending_connacks >= 200:  # a ramp, not a storm of CONNECTs
            await asyncio.sleep(0.01)
        client = client_for(device_id)
        client.connect("127.0.0.1", port, keepalive=60)
        pending_connacks += 1
        clients.append(client)
    housekeeping = asyncio.create_task(keep_alive(clients))
    reporters = [
        asyncio.create_task(report(device_id, client))
        for device_id, client in zip(ids, clients, strict=True)
    ]
    await stopping.wait()
    await asyncio.gather(*reporters)
    deadline = time.monotonic() + 120
    while status.acked < status.published and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for client in clients:
        client.disconnect()
    housekeeping.cancel()
    status.done = True
    write_status()


def devices_main(args: argparse.Namespace) -> int:
    raise_file_limit()
    ids = json.loads(Path(args.ids_file).read_text())
    asyncio.run(run_devices(ids, args.port, args.interval, Path(args.status_file)))
    return 0


# --- measuring the stack's processes ------------------------------------------------------------


def process_kind(cmdline: list[str]) -> str | None:
    """The stack service a process belongs to, from its command line."""
    line = " ".join(cmdline)
    if "--queues" in cmdline:  # `python -m apps.core.worker <queue>` execs Celery's worker
        return f"worker:{cmdline[cmdline.index('--queues') + 1]}"
    for marker, kind in (
        ("redis-server", "redis"),
        ("mosquitto", "mosquitto"),
        ("daphne_server", "daphne"),
        ("beat", "celerybeat"),
        ("--lane urgent", "subscriber:urgent"),
        ("mqtt_subscriber", "subscriber"),
        ("supervisord", "supervisord"),
    ):
        if marker in line:
            return kind
    return None


def stack_rss(stack_pid: int) -> dict[str, int]:
    """RSS in bytes per service of the stack; a Celery worker counts with its pool children."""
    import psutil

    from tests.services import descendants

    totals: dict[str, int] = defaultdict(int)
    for process in descendants(stack_pid):
        try:
            kind = process_kind(process.cmdline())  # a pool child has its worker's command line
            if kind:
                totals[kind] += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return dict(totals)


def daphne_process(stack_pid: int) -> Any:
    from tests.services import descendants

    for process in descendants(stack_pid):
        if process_kind(process.cmdline()) == "daphne":
            return process
    raise RuntimeError("no Daphne process in the stack")


def settled_rss(process: Any) -> int:
    """RSS once it stops moving (two samples a second apart within 0.5 %), at most 15 s."""
    previous = process.memory_info().rss
    for _ in range(15):
        time.sleep(1)
        current = process.memory_info().rss
        if abs(current - previous) <= previous * 0.005:
            return int(current)
        previous = current
    return int(previous)


def exported_metric(stack: Any, name: str, **labels: str) -> float:
    """One sample of the stack's /metrics/export/ (summed over its processes)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(stack.get("/metrics/export/"), timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def spread(seconds: list[float]) -> dict[str, int]:
    """p50, p99 and max in milliseconds."""
    return {
        "p50": round(statistics.median(seconds) * 1000),
        "p99": round(percentile(seconds, 0.99) * 1000),
        "max": round(max(seconds) * 1000),
    }


# --- part 1: NOC WebSocket clients ---------------------------------------------------------------


@dataclass
class Watcher:
    """One NOC client: what it was sent, acknowledged as the dashboard does."""

    tenant_id: int
    token: str
    connected_tenant: int | None = None
    snapshot: bool = False
    critical: list[tuple[str, float]] = field(default_factory=list)  # (source_id, received at)
    provisional: list[tuple[str, float]] = field(default_factory=list)  # the subscriber's frames
    updates: list[int] = field(default_factory=list)
    close_code: int | None = None


async def watch(url: str, watcher: Watcher, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {watcher.token}"}
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        acked_at = time.monotonic()
        reader = asyncio.ensure_future(ws.recv())
        stopper = asyncio.ensure_future(stop.wait())
        while True:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                reader.cancel()
                return
            try:
                message = json.loads(reader.result())
            except Exception:
                watcher.close_code = ws.close_code
                stopper.cancel()
                return
            reader = asyncio.ensure_future(ws.recv())
            kind = message["type"]
            if kind == "connected":
                watcher.connected_tenant = message["tenant_id"]
            elif kind == "snapshot":
                watcher.snapshot = True
            elif kind == "critical_alert" and message.get("provisional"):
                # apps/mqtt/announce.py: shown at once, replaced by the stored alert's frame.
                watcher.provisional.append((message["source_id"], time.monotonic()))
            elif kind == "critical_alert":
                watcher.critical.append((message["source_id"], time.monotonic()))
            elif kind == "alert_updated":
                watcher.updates.append(message["id"])
            # As the dashboard: acknowledge what was handled, at most every second (each ack
            # counts against NOC_MAX_MESSAGES_PER_MINUTE).
            if "seq" in message and time.monotonic() - acked_at >= 1:
                await ws.send(json.dumps({"type": "ack", "seq": message["seq"]}))
                acked_at = time.monotonic()


def established(sock: socket.socket) -> bool:
    import psutil

    local = sock.getsockname()
    return any(
        tuple(conn.laddr) == local and conn.status == psutil.CONN_ESTABLISHED
        for conn in psutil.Process().net_connections(kind="tcp")
    )


def create_operators(tenant: Any, clients: int, prefix: str) -> list[str]:
    """Tokens for `clients` sockets of `tenant`'s operators, SOCKETS_PER_USER each."""
    from apps.noc.auth import issue_access_token
    from apps.noc.operators import grant_operator_permissions
    from apps.tenants.models import User

    tokens = []
    for number in range(math.ceil(clients / SOCKETS_PER_USER)):
        user = User.objects.create_user(username=f"{prefix}-{number}", tenant=tenant)
        grant_operator_permissions(user)
        tokens.append(issue_access_token(user))
    return [tokens[n // SOCKETS_PER_USER] for n in range(clients)]


STREAM_CHUNK = 20  # events per tenant between two markers
STREAM_ROW_BASE = 10**9  # outbox-style ids far above the stack's own PendingBroadcast rows


def stream_events(
    watchers: list[Watcher], devices: dict[int, list[str]], per_tenant: int
) -> dict[str, float]:
    """Each tenant's clients get `per_tenant` events with outbox ids, as a busy NOC does:
    mostly conflated telemetry_update events, an alert_updated closing each chunk. The next
    chunk goes once every client has shown the last marker, so the slowest client sets the
    pace and the channel layer's capacity is never what is measured."""
    from apps.core.events import Event, EventType, broadcast_events
    from tests.services import wait_for

    row = STREAM_ROW_BASE
    sent = 0
    started = time.monotonic()
    for chunk in range(math.ceil(per_tenant / STREAM_CHUNK)):
        events: list[Event] = []
        for tenant, ids in devices.items():
            for number in range(STREAM_CHUNK - 1):
                states = [
                    {
                        "device_id": device,
                        "kind": "panic_button",
                        "site": "",
                        "status": "online",
                        "battery": 50 + (chunk + number) % 50,
                        "signal": -65,
                        "last_seen": datetime.now(tz=UTC).isoformat(),
                    }
                    for device in ids
                ]
                data = {"devices": states, "messages": len(states)}
                events.append(Event(tenant, EventType.TELEMETRY_UPDATE, data))
            marker = {"id": -1 - chunk, "source_id": ids[0], "severity": "LOW", "site": ""}
            events.append(Event(tenant, EventType.ALERT_UPDATED, {**marker, "status": "NEW"}))
        broadcast_events(events, ids=[f"{row}:{i}" for i in range(len(events))])
        row += 1
        sent += len(events)
        wait_for(
            lambda c=chunk: all(w.updates and w.updates[-1] == -1 - c for w in watchers),
            timeout=300,
            interval=0.02,
            what=f"every client's stream marker {chunk}",
        )
    return {"events": sent, "seconds": time.monotonic() - started}


def measure_websockets(stack: Any, args: argparse.Namespace, result: dict[str, Any]) -> None:
    from django.conf import settings

    from apps.core.events import Event, EventType, broadcast_events
    from tests.factories import create_tenant_with_devices, panic
    from tests.services import executable, stalled_websocket, wait_for

    url = f"ws://127.0.0.1:{stack.http_port}/ws/noc/dashboard/"
    rounds = 2
    panics: dict[int, list[list[str]]] = {}  # tenant id -> per round, its panic buttons
    watchers: list[Watcher] = []
    for t in range(args.tenants):
        ids = [[f"panic-ws{t}-r{r}-{k}" for k in range(args.alerts)] for r in range(rounds)]
        tenant = create_tenant_with_devices(f"scale-ws-{t}", *(i for r in ids for i in r))
        panics[tenant.pk] = ids
        share = args.clients // args.tenants + (t < args.clients % args.tenants)
        watchers += [
            Watcher(tenant.pk, token) for token in create_operators(tenant, share, f"ws{t}")
        ]
    slow_tenant = create_tenant_with_devices("scale-ws-slow")
    colleagues = [
        Watcher(slow_tenant.pk, token) for token in create_operators(slow_tenant, 3, "slow")
    ]
    (stalled_token,) = create_operators(slow_tenant, 1, "stalled")
    warm = [Watcher(slow_tenant.pk, token) for token in create_operators(slow_tenant, 10, "warm")]
    daphne = daphne_process(stack.pid)

    async def connect_all(group: list[Watcher], stop: asyncio.Event) -> list[asyncio.Task[None]]:
        tasks = []
        for start in range(0, len(group), 50):
            for watcher in group[start : start + 50]:
                tasks.append(asyncio.create_task(watch(url, watcher, stop)))
            await asyncio.to_thread(
                wait_for,
                lambda g=group[: start + 50]: all(w.snapshot for w in g),
                timeout=120,
                what="NOC clients' snapshots",
            )
        return tasks

    def publish_round(r: int) -> float:
        messages = [
            (f"alert/{source}/panic", panic(msg_id=f"{source}-1"))
            for ids in panics.values()
            for source in ids[r]
        ]
        # C publishers, one per button: with a thousand sockets open here, paho's select()
        # would be handed a descriptor above 1,024.
        port = stack.env["MQTT_PORT"]
        command = [executable("mosquitto_pub"), "-h", "127.0.0.1", "-p", port, "-q", "1"]
        sent = time.monotonic()
        publishers = [
            subprocess.Popen([*command, "-t", topic, "-m", payload]) for topic, payload in messages
        ]
        if any(publisher.wait(120) != 0 for publisher in publishers):
            raise RuntimeError("mosquitto_pub failed to publish an alert")
        return sent

    def flood(ids: range) -> None:
        data = {"source_id": "panic-slow", "severity": "CRITICAL", "site": "", "status": "NEW"}
        broadcast_events(
            [
                Event(
                    slow_tenant.pk,
                    EventType.ALERT_UPDATED,
                    {**data, "id": i, "message": "x" * 2000},
                )
                for i in ids
            ]
        )

    async def scenario() -> None:
        stop = asyncio.Event()
        # Warm-up: the first connects import and allocate what every later one shares.
        warm_stop = asyncio.Event()
        warm_tasks = await connect_all(warm, warm_stop)
        warm_stop.set()
        await asyncio.gather(*warm_tasks)
        before = await asyncio.to_thread(settled_rss, daphne)
        started = time.monotonic()
        tasks = await connect_all(watchers, stop)
        connect_seconds = time.monotonic() - started
        after = await asyncio.to_thread(settled_rss, daphne)
        result.update(
            {
                "clients": len(watchers),
                "tenants": args.tenants,
                "users": len({w.token for w in watchers}),
                "connect_seconds": round(connect_seconds, 1),
                "daphne_rss_before_mb": round(before / 2**20, 1),
                "daphne_rss_after_mb": round(after / 2**20, 1),
                "daphne_rss_added_mb": round((after - before) / 2**20, 1),
                "kib_per_client": round((after - before) / 1024 / len(watchers), 1),
            }
        )
        print(
            f"  {len(watchers)} clients connected in {connect_seconds:.0f} s; Daphne RSS "
            f"{before / 2**20:.0f} → {after / 2**20:.0f} MB (+{result['kib_per_client']} KiB each)"
        )

        # Steady state: each client is shown a long stream, then Daphne's RSS again.
        if args.stream:
            cpu_before = sum(daphne.cpu_times()[:2])
            stream = await asyncio.to_thread(
                stream_events,
                watchers,
                {t: [i for r in ids for i in r] for t, ids in panics.items()},
                args.stream,
            )
            cpu = sum(daphne.cpu_times()[:2]) - cpu_before
            streamed = await asyncio.to_thread(settled_rss, daphne)
            result["stream"] = {
                "events_per_tenant": args.stream,
                "events": stream["events"],
                "seconds": round(stream["seconds"], 1),
                "events_per_s": round(stream["events"] / stream["seconds"]),
                "daphne_cpu_ms_per_event": round(cpu * 1000 / stream["events"], 3),
                "daphne_rss_after_mb": round(streamed / 2**20, 1),
                "daphne_rss_added_mb": round((streamed - before) / 2**20, 1),
                "kib_per_client": round((streamed - before) / 1024 / len(watchers), 1),
            }
            print(
                f"  after {args.stream} events to each tenant ({stream['seconds']:.0f} s): "
                f"Daphne RSS {streamed / 2**20:.0f} MB "
                f"(+{result['stream']['kib_per_client']} KiB each)"
            )

        # Round 1: each tenant's alerts, through the whole pipeline, to each of its clients.
        sent = await asyncio.to_thread(publish_round, 0)
        await asyncio.to_thread(
            wait_for,
            lambda: all(len(w.critical) >= args.alerts for w in watchers),
            timeout=180,
            interval=0.2,
            what="every client's round-1 critical alerts",
        )
        # Publish → the alert's first frame at each client (the provisional one, if it came).
        result["alert_fanout_ms"] = spread(
            [first_seen - sent for w in watchers for first_seen in first_sight(w).values()]
        )

        # Daphne's part alone: one critical_alert per tenant broadcast from here (as a worker
        # does after its commit) → each client.
        probes = {t: f"probe-{t}" for t in panics}
        probe = [
            Event(t, EventType.CRITICAL_ALERT, {"id": -1, "source_id": source, "site": ""})
            for t, source in probes.items()
        ]
        sent = time.monotonic()
        await asyncio.to_thread(broadcast_events, probe)
        await asyncio.to_thread(
            wait_for,
            lambda: all(any(s == probes[w.tenant_id] for s, _ in w.critical) for w in watchers),
            timeout=60,
            interval=0.05,
            what="every client's broadcast probe",
        )
        result["broadcast_fanout_ms"] = spread(
            [at - sent for w in watchers for s, at in w.critical if s.startswith("probe-")]
        )

        # A client that stops reading, in its own tenant, while its colleagues take a flood
        # (twice NOC_MAX_UNACKED_BYTES) and every other tenant its round-2 alerts.
        colleague_tasks = await connect_all(colleagues, stop)
        cut_off_before = await asyncio.to_thread(
            exported_metric, stack, "noc_clients_cut_off_total"
        )
        stalled = await asyncio.to_thread(
            stalled_websocket, stack.http_port, stalled_token, timeout=10
        )
        chunks = [
            range(start, start + 50)
            for start in range(0, 2 * settings.NOC_MAX_UNACKED_BYTES // 2000, 50)
        ]
        await asyncio.to_thread(publish_round, 1)  # its alerts arrive during the flood
        for chunk in chunks:
            await asyncio.to_thread(flood, chunk)
            try:
                await asyncio.to_thread(
                    wait_for,
                    lambda c=chunk: all(c[-1] in w.updates[-50:] for w in colleagues),
                    timeout=60,
                )
            except TimeoutError:
                got = [(len(w.updates), w.close_code) for w in colleagues]
                raise TimeoutError(f"colleagues' flood events: (received, closed) {got}") from None
        await asyncio.to_thread(
            wait_for,
            lambda: not established(stalled),
            timeout=60,
            what="the stalled client's cut-off",
        )
        stalled.close()
        await asyncio.to_thread(
            wait_for,
            lambda: all(len(w.critical) >= rounds * args.alerts for w in watchers),
            timeout=180,
            interval=0.2,
            what="every client's round-2 critical alerts",
        )
        cut_off = await asyncio.to_thread(exported_metric, stack, "noc_clients_cut_off_total")
        flood_ids = [i for chunk in chunks for i in chunk]
        result["slow_client"] = {
            "closed": True,
            "counted": cut_off - cut_off_before,
            "colleagues_got_every_event": all(w.updates == flood_ids for w in colleagues),
            "flood_events": len(flood_ids),
        }

        # Isolation: each client got its own tenant's alerts, each stored one exactly once, each
        # provisional frame at most once (announcing is best effort), and no other tenant's.
        wrong = 0
        for w in watchers:
            own = sorted(
                [probes[w.tenant_id], *(source for ids in panics[w.tenant_id] for source in ids)]
            )
            got = sorted(source for source, _ in w.critical)
            shown_early = [source for source, _ in w.provisional]
            early_wrong = len(set(shown_early)) != len(shown_early) or not set(shown_early) <= set(
                own
            )
            if got != own or early_wrong or w.connected_tenant != w.tenant_id:
                wrong += 1
                if wrong == 1:  # what went wrong, for the first such client
                    result["first_wrong_client"] = {
                        "tenant": w.tenant_id,
                        "connected_tenant": w.connected_tenant,
                        "missing": sorted(set(own) - set(got))[:10],
                        "foreign": sorted(set(got) - set(own))[:10],
                        "twice": sorted({s for s in got if got.count(s) > 1})[:10],
                        "provisional": sorted(shown_early)[:10],
                    }
        result["clients_with_wrong_alerts"] = wrong
        result["provisional_frames"] = sum(len(w.provisional) for w in watchers)
        result["closed_early"] = sum(w.close_code is not None for w in watchers)
        result["channel_full_drops"] = await asyncio.to_thread(
            exported_metric, stack, "noc_events_dropped_total", reason="channel_full"
        )
        stop.set()
        await asyncio.gather(*tasks, *colleague_tasks, return_exceptions=True)
        result["daphne_rss_after_disconnect_mb"] = round(
            await asyncio.to_thread(settled_rss, daphne) / 2**20, 1
        )

    asyncio.run(scenario())


# --- part 2: the fleet and the soak --------------------------------------------------------------


def measure_fleet(stack: Any, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from apps.devices.models import TelemetryReading
    from tests.ledger import Fleet
    from tests.services import python_service, wait_for

    started = time.monotonic()
    fleet = Fleet.create(tenants=args.tenants, devices=args.devices)
    print(f"  {args.devices} devices registered in {time.monotonic() - started:.0f} s")
    ids = fleet.devices
    workers = []
    statuses = []
    for number, start in enumerate(range(0, len(ids), DEVICES_PER_PROCESS)):
        ids_file = scratch / f"devices-{number}.json"
        ids_file.write_text(json.dumps(ids[start : start + DEVICES_PER_PROCESS]))
        status = scratch / f"devices-{number}.status"
        statuses.append(status)
        argv = [
            *("-m", "bench.scale", "devices", "--ids-file", str(ids_file)),
            *("--status-file", str(status), "--port", stack.env["MQTT_PORT"]),
            *("--interval", str(args.interval)),
        ]
        workers.append(python_service(f"devices-{number}", argv, scratch / f"devices-{number}.log"))

    def fleet_status() -> FleetStatus:
        total = FleetStatus(done=True)
        for path in statuses:
            try:
                one = json.loads(path.read_text())
            except (OSError, ValueError):
                return FleetStatus()
            for name in ("connected", "published", "acked", "disconnects", "refused"):
                setattr(total, name, getattr(total, name) + one[name])
            total.done = total.done and one["done"]
        return total

    readings_before = TelemetryReading.objects.count()
    started = time.monotonic()
    try:
        wait_for(
            lambda: fleet_status().connected >= len(ids),
            timeout=600,
            interval=1,
            what=f"{len(ids)} devices connected ({fleet_status()})",
        )
        connect_seconds = time.monotonic() - started
        print(f"  {len(ids)} devices connected in {connect_seconds:.0f} s; warm-up {args.warmup} s")
        samples: list[dict[str, Any]] = []
        soak_start = time.monotonic() + args.warmup
        end = soak_start + args.soak
        next_sample = time.monotonic()
        while time.monotonic() < end:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += SAMPLE_SECONDS
            status = fleet_status()
            stored = TelemetryReading.objects.count() - readings_before
            sample = {
                "t": round(time.monotonic() - soak_start),
                "rss": stack_rss(stack.pid),
                "published": status.published,
                "acked": status.acked,
                "stored": stored,
                "backlog": status.acked - stored,
                "connected": status.connected,
            }
            samples.append(sample)
            print(
                f"  t={sample['t']:>4} s  connected {status.connected}  published "
                f"{status.published}  stored {stored}  backlog {sample['backlog']}  "
                f"mosquitto {sample['rss'].get('mosquitto', 0) / 2**20:.0f} MB  "
                f"daphne {sample['rss'].get('daphne', 0) / 2**20:.0f} MB"
            )
    finally:
        for worker in workers:
            worker.signal(signal.SIGTERM)
        try:
            wait_for(lambda: fleet_status().done, timeout=180, interval=1, what="the last acks")
        finally:
            for worker in workers:
                worker.stop()
    final = fleet_status()
    wait_for(
        lambda: TelemetryReading.objects.count() - readings_before >= final.acked,
        timeout=args.drain_timeout,
        interval=1,
        what=f"{final.acked} readings stored",
    )
    stored = TelemetryReading.objects.count() - readings_before
    soak = [s for s in samples if s["t"] >= 0]
    memory: dict[str, dict[str, float]] = {}
    for kind in sorted({k for s in soak for k in s["rss"]}):
        series = [s["rss"].get(kind, 0) / 2**20 for s in soak]
        memory[kind] = {
            "after_warmup_mb": round(series[0], 1),
            "peak_mb": round(max(series), 1),
            "end_mb": round(series[-1], 1),
            "growth_pct": round((series[-1] - series[0]) / series[0] * 100, 1) if series[0] else 0,
            "peak_growth_pct": round((max(series) - series[0]) / series[0] * 100, 1)
            if series[0]
            else 0,
        }
    duration = soak[-1]["t"] - soak[0]["t"] if len(soak) > 1 else 0
    return {
        "devices": len(ids),
        "tenants": args.tenants,
        "interval_s": args.interval,
        "processes": len(workers),
        "connect_seconds": round(connect_seconds, 1),
        "warmup_s": args.warmup,
        "soak_s": args.soak,
        "published": final.published,
        "acked": final.acked,
        "stored": stored,
        "lost": max(0, final.acked - stored),
        "duplicates": max(0, stored - final.published),
        "disconnects": final.disconnects,
        "refused": final.refused,
        "offered_msgs_per_s": round(len(ids) / args.interval, 1),
        "stored_msgs_per_s_during_soak": round(
            (soak[-1]["stored"] - soak[0]["stored"]) / duration, 1
        )
        if duration
        else None,
        "backlog": {
            "start": soak[0]["backlog"],
            "max": max(s["backlog"] for s in soak),
            "end": soak[-1]["backlog"],
        },
        "memory": memory,
        "samples": samples,
    }


# --- the run -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    devices = commands.add_parser("devices", help="(internal) one process of the device fleet")
    devices.add_argument("--ids-file", required=True)
    devices.add_argument("--status-file", required=True)
    devices.add_argument("--port", type=int, required=True)
    devices.add_argument("--interval", type=float, required=True)
    parser.add_argument("--clients", type=int, default=1000, help="NOC WebSocket clients")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--alerts", type=int, default=3, help="critical alerts per tenant a round")
    parser.add_argument(
        "--stream", type=int, default=2000, help="events to each tenant's clients (0: none)"
    )
    parser.add_argument("--devices", type=int, default=10000, help="MQTT connections, one each")
    parser.add_argument("--interval", type=float, default=10, help="seconds between readings")
    parser.add_argument("--warmup", type=int, default=60, help="seconds before the soak")
    parser.add_argument("--soak", type=int, default=300, help="seconds of the soak")
    parser.add_argument("--drain-timeout", type=int, default=600)
    parser.add_argument("--skip", choices=["websockets", "fleet"], action="append", default=[])
    args = parser.parse_args()
    if args.command == "devices":
        return devices_main(args)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    limit = raise_file_limit()
    if limit < args.clients + 200:
        print(f"this process may open {limit} files: too few for {args.clients} clients")
        return 1

    # Before Django reads the settings: a scratch directory and the stack's free ports.
    from tests import environment
    from tests.environment import free_port, redis_url
    from tests.services import Stack

    var_dir = environment.SCRATCH / "stack"
    overrides = {
        "HTTP_PORT": str(free_port()),
        "MQTT_PORT": str(free_port()),
        "REDIS_URL": redis_url(free_port()),
        "MONITORING_API_KEY": secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(Stack.environment(var_dir, **overrides))
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "load_at_start": os.getloadavg()},
        "args": {k: v for k, v in vars(args).items() if k != "command"},
    }
    print(f"Starting the stack (scratch {environment.SCRATCH})")
    stack = Stack(var_dir, environment.SCRATCH / "stack.log", **overrides)
    try:
        stack.wait_healthy(timeout=180)
        if "websockets" not in args.skip:
            print(f"NOC WebSocket clients: {args.clients} over {args.tenants} tenants, one Daphne")
            try:
                measure_websockets(stack, args, results.setdefault("websockets", {}))
            except Exception as exc:  # reported; the fleet is measured all the same
                results["websockets"]["error"] = repr(exc)
                print(f"  FAILED: {exc!r}")
        if "fleet" not in args.skip:
            print(
                f"Fleet: {args.devices} MQTT connections, a reading each every {args.interval} s, "
                f"soak {args.soak} s"
            )
            results["fleet"] = measure_fleet(stack, args, environment.SCRATCH)
    except BaseException:
        environment.keep_scratch()  # the stack's logs, for whoever looks into it
        raise
    finally:
        stack.stop(timeout=60)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print_table(results)
        print(f"Written to {RESULTS}")
        environment.pytest_unconfigure()
    return 0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def first_sight(watcher: Watcher) -> dict[str, float]:
    """When the client first saw each alert: its provisional frame or, without one, the stored."""
    seen: dict[str, float] = {}
    for source, at in [*watcher.provisional, *watcher.critical]:
        seen[source] = min(at, seen.get(source, at))
    return seen


def print_table(results: dict[str, Any]) -> None:
    ws = results.get("websockets")
    if ws and "slow_client" in ws:
        print(
            f"\nWebSocket clients  {ws['clients']} over {ws['tenants']} tenants "
            f"({ws['users']} users)"
            f"\n  Daphne RSS       +{ws['daphne_rss_added_mb']} MB at connect "
            f"({ws['kib_per_client']} KiB a client; target ≤ 60 MB)"
            + (
                f"\n                   +{ws['stream']['daphne_rss_added_mb']} MB after "
                f"{ws['stream']['events_per_tenant']} events to each tenant "
                f"({ws['stream']['kib_per_client']} KiB a client; "
                f"{ws['stream']['events_per_s']} events/s, "
                f"{ws['stream']['daphne_cpu_ms_per_event']} ms of Daphne CPU each)"
                if "stream" in ws
                else ""
            )
            + f"\n  alert fan-out    p50 {ws['alert_fanout_ms']['p50']} ms, "
            f"p99 {ws['alert_fanout_ms']['p99']} ms (publish → each client's first frame; "
            f"{ws.get('provisional_frames', 0)} provisional frames)"
            f"\n                   p50 {ws['broadcast_fanout_ms']['p50']} ms, "
            f"p99 {ws['broadcast_fanout_ms']['p99']} ms (broadcast → each client: Daphne's part)"
            f"\n  isolation        {ws['clients_with_wrong_alerts']} clients with a wrong alert set"
            + (f" (the first: {ws['first_wrong_client']})" if "first_wrong_client" in ws else "")
            + f"\n  slow client      closed, counted {ws['slow_client']['counted']:.0f}, "
            f"colleagues got every event: {ws['slow_client']['colleagues_got_every_event']}"
        )
    fleet = results.get("fleet")
    if fleet:
        print(
            f"\nFleet              {fleet['devices']} devices, every {fleet['interval_s']} s "
            f"({fleet['offered_msgs_per_s']} msg/s offered), soak {fleet['soak_s']} s"
            f"\n  stored           {fleet['stored_msgs_per_s_during_soak']} msg/s during the soak; "
            f"backlog {fleet['backlog']}"
            f"\n  lost / dup       {fleet['lost']} / {fleet['duplicates']} "
            f"(published {fleet['published']}, acked {fleet['acked']}, stored {fleet['stored']})"
        )
        print("  RSS (MB)         after warm-up → end (peak), growth")
        for kind, m in fleet["memory"].items():
            print(
                f"    {kind:<22} {m['after_warmup_mb']:>7} → {m['end_mb']:>7} "
                f"({m['peak_mb']}), {m['growth_pct']:+.1f} %"
            )


if __name__ == "__main__":
    sys.exit(main())
