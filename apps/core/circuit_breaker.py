"""A circuit breaker shared by every process, kept in Redis under `circuit_breaker:<service>`.

The value is plain JSON, readable with `redis-cli GET circuit_breaker:mqtt_broker`:
`{"state": "closed" | "open" | "half_open", "failures": N, "opened_at": epoch seconds}`.
After `failure_threshold` consecutive failures the breaker opens and calls are refused without
being attempted (counted: `circuit_breaker_calls_refused_total`); `reset_timeout` seconds after
`opened_at` one process claims the one trial call (half-open, `opened_at` then marks the trial's
start; the others are still refused): success closes it, failure opens it again. No key means
closed: `redis-cli DEL circuit_breaker:<service>` resets it by hand, as does
`manage.py circuit_breaker reset <service>`, which also logs who did it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Final, TypeVar

import redis
import structlog
from django.conf import settings

from apps.core import metrics
from apps.core.redis_client import state_redis

log = structlog.get_logger(__name__)

KEY_PREFIX = "circuit_breaker:"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")

# Every breaker the code uses under a fixed name, with what it guards: each is reported (closed
# while it has no key) by `manage.py circuit_breaker status` and the circuit_breaker_state gauge.
MQTT_BROKER: Final = "mqtt_broker"
SMTP: Final = "smtp"
SERVICES: Final[Mapping[str, str]] = {
    MQTT_BROKER: "commands to devices over MQTT (task publish_device_command)",
    SMTP: "alert notifications by e-mail (EMAIL_HOST; apps/notifications)",
}
# Each webhook endpoint of a notification rule has its own, `webhook:<hash of its address>`
# (apps/notifications/webhooks.py), reported once it has a key.
T = TypeVar("T")


class CircuitOpenError(Exception):
    """The service failed repeatedly; calls are refused until the breaker's timeout passes."""


@dataclass
class BreakerState:
    state: str = CLOSED
    failures: int = 0
    opened_at: float | None = None


def decode(raw: str) -> BreakerState:
    """A breaker's record as stored under its key; ValueError when it cannot be read."""
    try:
        return BreakerState(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"unreadable circuit breaker record {raw!r}") from exc


def read_state(client: redis.Redis[str], service: str) -> BreakerState:
    raw = client.get(KEY_PREFIX + service)
    if not raw:
        return BreakerState()
    try:
        return decode(raw)
    except ValueError:
        log.warning("unreadable circuit breaker record; treating it as closed", service=service)
        return BreakerState()


class CircuitBreaker:
    def __init__(
        self,
        service: str,
        *,
        failure_threshold: int | None = None,
        reset_timeout: float | None = None,
        client: redis.Redis[str] | None = None,
    ) -> None:
        self.service = service
        self.key = KEY_PREFIX + service
        self.failure_threshold = failure_threshold or settings.CIRCUIT_BREAKER_FAILURE_THRESHOLD
        self.reset_timeout = reset_timeout or settings.CIRCUIT_BREAKER_RESET_SECONDS
        self.client = client or state_redis()

    def call(self, operation: Callable[[], T]) -> T:
        """Run `operation` through the breaker; its errors are recorded and re-raised."""
        self.before_call()
        try:
            result = operation()
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return result

    def before_call(self) -> None:
        """Return when the call may go ahead; raise CircuitOpenError (counted) when not."""
        current = read_state(self.client, self.service)
        if current.state == CLOSED:
            return
        if self.seconds_to_trial(current) > 0:
            raise self._refused(current)

        def claim_trial(state: BreakerState) -> BreakerState:
            # Atomic: of the processes that get here at once, one makes the trial call.
            if state.state == CLOSED:
                return state
            if self.seconds_to_trial(state) > 0:
                raise self._refused(state)
            return BreakerState(HALF_OPEN, state.failures, time.time())

        self._update(claim_trial)

    def seconds_to_trial(self, state: BreakerState) -> float:
        """Seconds until a trial call may go (after a trial call that never reported, another)."""
        return (state.opened_at or 0) + self.reset_timeout - time.time()

    def _refused(self, state: BreakerState) -> CircuitOpenError:
        metrics.CIRCUIT_BREAKER_CALLS_REFUSED.labels(service=self.service).inc()
        trial = "a trial call is under way, " if state.state == HALF_OPEN else ""
        return CircuitOpenError(
            f"Circuit breaker {state.state.replace('_', '-')} for {self.service}: {trial}"
            f"{state.failures} failures, retrying in {max(0.0, self.seconds_to_trial(state)):.0f}"
            f" s (reset by hand: redis-cli DEL {self.key})"
        )

    def record_success(self) -> None:
        if read_state(self.client, self.service) != BreakerState():
            self._update(lambda state: BreakerState())

    def record_failure(self) -> None:
        def failed(state: BreakerState) -> BreakerState:
            failures = state.failures + 1
            if state.state == HALF_OPEN or failures >= self.failure_threshold:
                return BreakerState(OPEN, failures, time.time())
            return BreakerState(state.state, failures, state.opened_at)

        self._update(failed)

    def reset(self, by: str) -> str | None:
        """Close the breaker by hand (as `redis-cli DEL` does), logged with who did it; return
        the record it removed, as stored (None: there was none, it was closed)."""
        raw = self.client.getdel(self.key)
        if raw is None:
            log.info("circuit breaker reset by hand: it was closed", service=self.service, by=by)
            return None
        try:
            before: BreakerState | None = decode(raw)
        except ValueError:
            before = None
        metrics.CIRCUIT_BREAKER_RESETS.labels(service=self.service).inc()
        if before is None or before.state != CLOSED:
            metrics.CIRCUIT_BREAKER_TRANSITIONS.labels(service=self.service, state=CLOSED).inc()
        log.warning(
            "circuit breaker reset by hand: closed, calls go through again",
            service=self.service,
            by=by,
            was=before.state if before else "unreadable",
            failures=before.failures if before else None,
        )
        return raw

    def _update(self, change: Callable[[BreakerState], BreakerState]) -> None:
        """Apply `change` atomically (WATCH/MULTI): concurrent workers never lose a count."""
        states: list[BreakerState] = []

        def transaction(pipe: redis.client.Pipeline[str]) -> None:
            before = read_state(pipe, self.service)
            after = change(before)
            states[:] = [before, after]
            pipe.multi()
            if after != before:
                pipe.set(self.key, json.dumps(asdict(after)))

        self.client.transaction(transaction, self.key)  # type: ignore[no-untyped-call]
        before, after = states
        if after.state != before.state:
            metrics.CIRCUIT_BREAKER_TRANSITIONS.labels(
                service=self.service, state=after.state
            ).inc()
            log_event = log.error if after.state == OPEN else log.info
            log_event(
                f"circuit breaker {after.state.replace('_', '-')}",
                service=self.service,
                failures=after.failures,
                retry_after_s=self.reset_timeout if after.state == OPEN else None,
            )
