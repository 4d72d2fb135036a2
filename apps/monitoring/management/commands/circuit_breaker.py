"""The circuit breakers, for operators.

manage.py circuit_breaker status [SERVICE]   every breaker (declared or recorded), or one
manage.py circuit_breaker reset SERVICE      close it now, logged with who did it

Exit codes, for scripts: 0 every breaker shown is closed, or the reset was done; 1 one shown is
open or half-open (calls refused); 2 usage: an invalid or unknown service name; 3 the state
could not be read (Redis unreachable, or an unreadable record: `reset` clears it).
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core import circuit_breaker
from apps.core.circuit_breaker import CLOSED, HALF_OPEN, OPEN, BreakerState, CircuitBreaker
from apps.core.redis_client import state_redis
from apps.monitoring import bus_state

EXIT_OPEN, EXIT_USAGE, EXIT_UNREADABLE = 1, 2, 3


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def describe(service: str, state: BreakerState | None, now: float) -> list[str]:
    """What an operator needs to know about one breaker, a few plain lines."""
    guards = circuit_breaker.SERVICES.get(service)
    guarding = [f"  guards {guards}"] if guards else []
    reset = f"manage.py circuit_breaker reset {service}"
    if state is None:
        return [
            f"{service}: UNREADABLE record (workers treat it as closed)",
            *guarding,
            f"  inspect: redis-cli GET {circuit_breaker.KEY_PREFIX}{service}; clear: {reset}",
        ]
    threshold = settings.CIRCUIT_BREAKER_FAILURE_THRESHOLD
    if state.state == CLOSED:
        return [
            f"{service}: closed, calls go through",
            *guarding,
            f"  {state.failures} consecutive failures (it opens at {threshold})",
        ]
    since = state.opened_at or 0.0
    trial_at = since + settings.CIRCUIT_BREAKER_RESET_SECONDS
    if state.state == HALF_OPEN:
        lines = [
            f"{service}: HALF-OPEN, one trial call is under way; other calls are refused",
            *guarding,
            f"  {state.failures} consecutive failures; the trial began {_clock(since)} "
            f"({_duration(now - since)} ago): success closes the breaker, failure opens it",
            f"  if the trial never reports, another is let through at {_clock(trial_at)}",
        ]
    else:
        when = f"in {_duration(trial_at - now)}" if trial_at > now else "on the next call (due now)"
        lines = [
            f"{service}: OPEN, calls are refused without being tried",
            *guarding,
            f"  {state.failures} consecutive failures; opened {_clock(since)} "
            f"({_duration(now - since)} ago)",
            f"  half-opens at {_clock(trial_at)} ({when}): one trial call, success closes it",
        ]
    return [*lines, f"  once the service is healthy again, close it now: {reset}"]


class Command(BaseCommand):
    help = "Show circuit breakers (status [SERVICE]) or close one by hand (reset SERVICE)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        status = actions.add_parser("status", help="state of every breaker, or of one")
        status.add_argument("service", nargs="?")
        reset = actions.add_parser("reset", help="close a breaker now (the service is healthy)")
        reset.add_argument("service")

    def handle(self, *args: Any, **options: Any) -> None:
        client = state_redis()
        try:
            code = getattr(self, f"_{options['action']}")(client, options["service"])
        except redis.RedisError as exc:
            raise CommandError(
                f"cannot read the circuit breakers from Redis: {exc}. Is Redis up? "
                "Check with scripts/health_check_message_bus.sh",
                returncode=EXIT_UNREADABLE,
            ) from None
        if code:
            sys.exit(code)

    def _status(self, client: redis.Redis[str], service: str | None) -> int:
        found = bus_state.every_breaker(client)
        if service is not None:
            self._check_known(service, found)
            found = {service: found[service]}
        now = time.time()
        for name, state in found.items():
            lines = describe(name, state, now)
            style = self.style.SUCCESS if state and state.state == CLOSED else self.style.ERROR
            self.stdout.write(style(lines[0]))
            for line in lines[1:]:
                self.stdout.write(line)
        states = [state.state if state else None for state in found.values()]
        if None in states:
            return EXIT_UNREADABLE
        return EXIT_OPEN if OPEN in states or HALF_OPEN in states else 0

    def _reset(self, client: redis.Redis[str], service: str) -> int:
        self._check_known(service, bus_state.every_breaker(client))
        who = os.environ.get("SUDO_USER") or getpass.getuser()
        by = f"{who}@{socket.gethostname()} (manage.py circuit_breaker reset)"
        removed = CircuitBreaker(service, client=client).reset(by=by)
        try:
            before = None if removed is None else circuit_breaker.decode(removed)
        except ValueError:
            self.stdout.write(f"{service} closed by {by}: its unreadable record is removed.")
            return 0
        if before is None or before.state == CLOSED:
            self.stdout.write(f"{service} was closed already; nothing was refused.")
            return 0
        self.stdout.write(
            self.style.SUCCESS(
                f"{service} closed by {by}: it was {before.state.replace('_', '-')} after "
                f"{before.failures} consecutive failures. Calls go through again; tasks already "
                f"waiting to retry keep their time (up to {settings.CIRCUIT_BREAKER_RESET_SECONDS}"
                " s)."
            )
        )
        return 0

    def _check_known(self, service: str, found: dict[str, BreakerState | None]) -> None:
        known = ", ".join(found)
        if not circuit_breaker.SERVICE_NAME.fullmatch(service):
            raise CommandError(
                f"{service!r} is not a circuit breaker name (letters, digits, _ . : -, up to "
                f"100). Breakers: {known}",
                returncode=EXIT_USAGE,
            )
        if service not in found:
            raise CommandError(
                f"no circuit breaker {service!r}: the code declares none by that name and Redis "
                f"holds no {circuit_breaker.KEY_PREFIX}{service}. Breakers: {known}",
                returncode=EXIT_USAGE,
            )
