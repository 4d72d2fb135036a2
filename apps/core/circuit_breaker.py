"""A circuit breaker shared by every process, kept in Redis under `circuit_breaker:<service>`.

The value is plain JSON, readable with `redis-cli GET circuit_breaker:mqtt_broker`:
`{"state": "closed" | "open" | "half_open", "failures": N, "opened_at": epoch seconds}`.
After `failure_threshold` consecutive failures the breaker opens and calls fail fast; after
`reset_timeout` seconds one trial call is let through (half-open): success closes it, failure
opens it again. `redis-cli DEL circuit_breaker:<service>` resets it by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import redis
import structlog
from django.conf import settings

from apps.core import metrics
from apps.core.redis_client import state_redis

log = structlog.get_logger(__name__)

KEY_PREFIX = "circuit_breaker:"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
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
        current = read_state(self.client, self.service)
        if current.state != OPEN:
            return
        waited = time.time() - (current.opened_at or 0)
        if waited < self.reset_timeout:
            raise CircuitOpenError(
                f"Circuit breaker open for {self.service}: {current.failures} failures, "
                f"retrying in {self.reset_timeout - waited:.0f} s "
                f"(reset by hand: redis-cli DEL {self.key})"
            )

        def trial(state: BreakerState) -> BreakerState:
            return BreakerState(HALF_OPEN, state.failures, state.opened_at)

        self._update(trial)

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

    def _update(self, change: Callable[[BreakerState], BreakerState]) -> None:
        """Apply `change` atomically (WATCH/MULTI): concurrent workers never lose a count."""
        states: list[BreakerState] = []

        def transaction(pipe: redis.client.Pipeline[str]) -> None:
            before = read_state(pipe, self.service)
            after = change(before)
            states[:] = [before, after]
            pipe.multi()
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
