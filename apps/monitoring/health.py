"""Health checks: one cheap round trip per dependency, all in parallel, bounded in time.

Each check is a plain function that raises on failure and may return details. `run_checks`
runs them concurrently and turns a hang into a timeout, so the endpoint answers in bounded
time even when a component does not answer at all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from celery import current_app
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from paho.mqtt.reasoncodes import ReasonCode

from apps.core import intake_status
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import CANARY_INTERVAL_SECONDS, QUEUES, QueueSpec
from apps.monitoring.bus_state import read_canaries, readers_by_prefix
from apps.mqtt.client import app_client

Details = dict[str, Any]

# A queue is consumed while its latest canary ran within this bound. A busy but healthy pool can
# hold a canary back by one running task (canaries go first, but do not preempt), so queues whose
# tasks may run longer get their hard time limit instead.
CANARY_MAX_AGE_SECONDS = 4 * CANARY_INTERVAL_SECONDS


def canary_max_age(queue: QueueSpec) -> int:
    return max(CANARY_MAX_AGE_SECONDS, queue.time_limit)


class CheckFailed(Exception):
    """A dependency answered, but not as it should."""


@dataclass
class CheckResult:
    ok: bool
    latency_ms: float
    error: str | None = None
    details: Details = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": self.ok, "latency_ms": round(self.latency_ms, 1)}
        if self.error:
            result["error"] = self.error
        result.update(self.details)
        return result


def check_database() -> Details:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()
    return {"vendor": connection.vendor}


def check_redis() -> Details:
    if not state_redis().ping():
        raise CheckFailed("PING did not answer PONG")
    return {}


async def check_channel_layer() -> Details:
    layer = get_channel_layer()
    if layer is None:
        raise CheckFailed("CHANNEL_LAYERS is not configured")
    channel = await layer.new_channel("health.")
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "health.ping", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise CheckFailed("round trip returned a different message")
    return {}


def check_mqtt_broker() -> Details:
    client = app_client(role="health")
    refused: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, code, _p: (
        refused.append(code) if code.is_failure else None
    )
    deadline = time.monotonic() + settings.HEALTH_CHECK_TIMEOUT
    try:
        client.connect(settings.MQTT_HOST, settings.MQTT_PORT, keepalive=10)
        while not client.is_connected():
            if refused:
                raise CheckFailed(
                    f"broker refused the application account: {refused[0]} "
                    "(check MQTT_USERNAME / MQTT_PASSWORD and sync_mqtt_credentials)"
                )
            if time.monotonic() > deadline:
                raise CheckFailed("no CONNACK from the broker")
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    return {}


def check_celery_queues() -> dict[str, Details]:
    """Which worker nodes consume each queue, from one broadcast to every worker."""
    timeout = max(0.2, settings.HEALTH_CHECK_TIMEOUT - 0.5)
    replies = current_app.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {queue.name: [] for queue in QUEUES}
    for node, queues in replies.items():
        for queue in queues:
            consumers.setdefault(queue["name"], []).append(node)
    return {name: {"workers": sorted(nodes)} for name, nodes in consumers.items()}


def check_canaries() -> Details:
    return dict(read_canaries(state_redis()))


def check_mqtt_subscriber() -> Details:
    statuses = intake_status.read_statuses(state_redis())
    connected = [status for status in statuses if status.connected]
    if not statuses:
        raise CheckFailed(
            f"no subscriber has reported in the last {intake_status.STATUS_TTL_SECONDS} s"
        )
    if not connected and all(status.paused for status in statuses):
        raise CheckFailed("intake paused by an operator; resume with manage.py drain --resume")
    if not connected:
        raise CheckFailed("subscriber is running but not connected to the broker")
    unread = [prefix for prefix, readers in readers_by_prefix(statuses).items() if not readers]
    if unread:
        raise CheckFailed(
            f"no connected subscriber reads {', '.join(unread)}: check the subscriber "
            "of that lane (`manage.py mqtt_subscriber --lane urgent` for alert/, `--lane "
            "routine` for the rest; under make run, programs mqtt_subscriber_urgent and "
            "mqtt_subscriber) and its log"
        )
    expected = settings.MQTT_SUBSCRIBERS_EXPECTED
    if len(connected) < expected:
        names = ", ".join(sorted(status.client_id for status in connected))
        raise CheckFailed(
            f"{len(connected)} of MQTT_SUBSCRIBERS_EXPECTED={expected} subscribers connected "
            f"({names}): a missing member's share of the shared group waits in its session "
            "until it returns or a survivor adopts it (MQTT_SHARED_ADOPT_AFTER). Start it again "
            "(its host's mqtt_subscriber log says why it stopped), or, if it was retired, "
            "lower MQTT_SUBSCRIBERS_EXPECTED"
        )
    ages = [s.last_message_age for s in connected if s.last_message_age is not None]
    return {
        "subscribers": sorted(status.client_id for status in connected),
        "last_message_age_s": round(min(ages), 1) if ages else None,
    }


async def _timed(check: Callable[[], Awaitable[Details]], timeout: float) -> CheckResult:
    started = time.perf_counter()
    try:
        details = await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        error = f"no answer within {timeout:.1f} s"
        return CheckResult(False, (time.perf_counter() - started) * 1000, error)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return CheckResult(False, (time.perf_counter() - started) * 1000, error)
    return CheckResult(True, (time.perf_counter() - started) * 1000, details=details)


def _in_thread(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    return sync_to_async(check, thread_sensitive=False)


async def run_checks() -> dict[str, CheckResult]:
    timeout = settings.HEALTH_CHECK_TIMEOUT
    simple: dict[str, Callable[[], Awaitable[Details]]] = {
        "database": _in_thread(check_database),
        "redis": _in_thread(check_redis),
        "channel_layer": check_channel_layer,
        "mqtt_broker": _in_thread(check_mqtt_broker),
        "mqtt_subscriber": _in_thread(check_mqtt_subscriber),
    }
    names = list(simple)
    outcomes = await asyncio.gather(
        *(_timed(simple[name], timeout) for name in names),
        _timed(_in_thread(check_celery_queues), timeout),
        _timed(_in_thread(check_canaries), timeout),
    )
    results = dict(zip(names, outcomes[:-2], strict=True))
    results.update(_per_queue(outcomes[-2], outcomes[-1]))
    return results


def _per_queue(queues: CheckResult, canaries: CheckResult) -> dict[str, CheckResult]:
    """One check per queue from the Celery broadcast and the canaries: a queue is up when a
    worker subscribes to it *and* its latest canary ran recently."""
    results = {}
    latency_ms = max(queues.latency_ms, canaries.latency_ms)
    now = time.time()
    # Beat sends the canaries: when all are late, beat (not every pool at once) is the suspect.
    every_canary_late = canaries.ok and all(
        (at := canaries.details.get(queue.name)) is None or now - at > canary_max_age(queue)
        for queue in QUEUES
    )
    for queue in QUEUES:
        name = f"workers:{queue.name}"
        if not queues.ok:
            results[name] = CheckResult(False, latency_ms, queues.error)
            continue
        workers = queues.details.get(queue.name, {}).get("workers", [])
        consumed_at = canaries.details.get(queue.name)
        age = None if consumed_at is None else max(0.0, now - consumed_at)
        details = {"workers": workers, "canary_age_s": None if age is None else round(age, 1)}
        if not workers:
            error = f"no worker consumes the {queue.name} queue"
        elif not canaries.ok:
            error = f"canary unreadable: {canaries.error}"
        elif age is None:
            error = (
                f"no canary from the {queue.name} queue has run yet "
                f"(celerybeat sends one every {CANARY_INTERVAL_SECONDS} s)"
            )
        elif age > canary_max_age(queue):
            error = (
                f"the {queue.name} queue is not being consumed: its last canary ran "
                f"{age:.0f} s ago (limit {canary_max_age(queue)} s)"
            )
            if every_canary_late:
                error += "; every queue's canary is late, so check celerybeat first"
        else:
            error = None
        results[name] = CheckResult(error is None, latency_ms, error, details)
    return results
