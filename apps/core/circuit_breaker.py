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

from apps.core.redis_client import state_redis
from apps.monitoring import metrics

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


def read_state(client: redis.Redis[str], service: str) -> BreakerState:
    raw = client.get(KEY_PREFIX + service)
    if not raw:
        return BreakerState()
    try:
        return BreakerState(**json.loads(raw))
    except (ValueError, TypeError):
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
        self._write(BreakerState(HALF_OPEN, current.failures, current.opened_at))

    def record_success(self) -> None:
        current = read_state(self.client, self.service)
        if current.state != CLOSED or current.failures:
            if current.state != CLOSED:
                log.info("circuit breaker closed", service=self.service)
            self._write(BreakerState())

    def record_failure(self) -> None:
        current = read_state(self.client, self.service)
        failures = current.failures + 1
        if current.state == HALF_OPEN or failures >= self.failure_threshold:
            if current.state != OPEN:
                log.error(
                    "circuit breaker opened",
                    service=self.service,
                    failures=failures,
                    retry_after_s=self.reset_timeout,
                )
            self._write(BreakerState(OPEN, failures, time.time()))
        else:
            self._write(BreakerState(current.state, failures, current.opened_at))

    def _write(self, state: BreakerState) -> None:
        previous = read_state(self.client, self.service).state
        self.client.set(self.key, json.dumps(asdict(state)))
        if state.state != previous:
            metrics.CIRCUIT_BREAKER_TRANSITIONS.labels(
                service=self.service, state=state.state
            ).inc()
