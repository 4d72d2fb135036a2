"""manage.py circuit_breaker status/reset, the runbook's redis-cli lines and the breaker gauge,
against the real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import StringIO
from typing import Any

import pytest
import structlog
from django.core.management import CommandError, call_command
from django.test import Client

from apps.core.circuit_breaker import CircuitBreaker
from tests import environment
from tests.services import ROOT, metric


def status(*args: str) -> tuple[int, str]:
    """The command's output and exit code, as a script sees them."""
    out = StringIO()
    try:
        call_command("circuit_breaker", *args, stdout=out)
    except SystemExit as exit:
        return int(exit.code or 0), out.getvalue()
    return 0, out.getvalue()


def open_breaker(service: str = "mqtt_broker", failures: int = 5) -> CircuitBreaker:
    breaker = CircuitBreaker(service, failure_threshold=failures, reset_timeout=300)
    for _ in range(failures):
        breaker.record_failure()
    return breaker


def redis_cli(*args: str) -> str:
    """As the runbook has operators run it: the password in REDISCLI_AUTH, never in argv."""
    return subprocess.run(
        ["redis-cli", "-p", str(environment.REDIS_PORT), *args],
        env={**os.environ, "REDISCLI_AUTH": environment.REDIS_PASSWORD},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_a_breaker_without_a_record_is_shown_closed_and_exits_0(redis_client: Any):
    code, output = status("status")
    assert code == 0
    assert "mqtt_broker: closed, calls go through\n  guards commands to devices over MQTT" in output
    assert "closed, calls go through" in output
    assert "0 consecutive failures (it opens at 5)" in output


def test_an_open_breaker_says_since_when_and_when_it_half_opens_and_exits_1(redis_client: Any):
    open_breaker()
    CircuitBreaker("webhook:7").record_failure()  # recorded, not declared: listed too

    code, output = status("status")

    assert code == 1
    assert "mqtt_broker: OPEN, calls are refused without being tried" in output
    assert "guards commands to devices over MQTT" in output
    assert "5 consecutive failures; opened " in output
    assert re.search(r"\(\d s ago\)", output)
    assert re.search(r"half-opens at .* \(in (5 min 0|4 min 5\d) s\)", output)
    assert "close it now: manage.py circuit_breaker reset mqtt_broker" in output
    assert "webhook:7: closed, calls go through" in output
    assert status("status", "webhook:7")[0] == 0


def test_a_half_open_breaker_says_a_trial_is_under_way(redis_client: Any):
    redis_client.set(
        "circuit_breaker:mqtt_broker",
        json.dumps({"state": "half_open", "failures": 6, "opened_at": 1_000.0}),
    )
    code, output = status("status", "mqtt_broker")
    assert code == 1
    assert "HALF-OPEN, one trial call is under way; other calls are refused" in output


def test_an_unreadable_record_exits_3_and_reset_clears_it(redis_client: Any):
    redis_client.set("circuit_breaker:mqtt_broker", "not json")
    code, output = status("status")
    assert code == 3
    assert "UNREADABLE record" in output
    code, output = status("reset", "mqtt_broker")
    assert code == 0
    assert "its unreadable record is removed" in output
    assert status("status")[0] == 0


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ("mqtt-broker", "no circuit breaker 'mqtt-broker'"),
        ("mqtt broker; rm", "'mqtt broker; rm' is not a circuit breaker name"),
        ("*", "'*' is not a circuit breaker name"),
    ],
)
def test_an_unknown_or_invalid_service_is_refused_with_exit_2(
    redis_client: Any, service: str, message: str
):
    for action in ("status", "reset"):
        with pytest.raises(CommandError, match="Breakers: mqtt_broker") as refused:
            call_command("circuit_breaker", action, service)
        assert message in str(refused.value)
        assert refused.value.returncode == 2
    assert redis_client.keys("circuit_breaker:*") == []


def test_reset_closes_the_breaker_logs_who_did_it_and_counts_it(redis_client: Any):
    breaker = open_breaker()
    resets = metric("circuit_breaker_resets_total", service="mqtt_broker")

    with structlog.testing.capture_logs() as logs:
        code, output = status("reset", "mqtt_broker")

    assert code == 0
    assert "mqtt_broker closed by " in output
    assert "it was open after 5 consecutive failures" in output
    assert redis_client.get("circuit_breaker:mqtt_broker") is None
    breaker.call(lambda: None)  # goes through
    [entry] = [e for e in logs if e["event"].startswith("circuit breaker reset by hand")]
    assert entry["log_level"] == "warning"
    assert entry["by"].endswith("(manage.py circuit_breaker reset)")
    assert entry["was"] == "open"
    assert metric("circuit_breaker_resets_total", service="mqtt_broker") == resets + 1
    assert "was closed already; nothing was refused" in status("reset", "mqtt_broker")[1]
    assert metric("circuit_breaker_resets_total", service="mqtt_broker") == resets + 1


def test_the_runbooks_redis_cli_get_and_del_lines_agree_with_the_command(redis_client: Any):
    open_breaker()
    record = json.loads(redis_cli("GET", "circuit_breaker:mqtt_broker"))
    assert record["state"] == "open"
    assert record["failures"] == 5
    assert status("status", "mqtt_broker")[0] == 1

    assert redis_cli("DEL", "circuit_breaker:mqtt_broker") == "1"
    code, output = status("status", "mqtt_broker")
    assert code == 0
    assert "closed, calls go through" in output


def test_exit_codes_reach_the_shell(redis_client: Any):
    open_breaker()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "circuit_breaker", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    opened = run("status", "mqtt_broker")
    assert opened.returncode == 1, opened.stderr
    assert "OPEN" in opened.stdout


def test_the_gauge_reports_every_declared_breaker_even_without_a_record(
    client: Client, redis_client: Any
):
    from tests.monitoring.test_metrics import scrape, value

    samples = scrape(client)
    assert value(samples, "circuit_breaker_state", service="mqtt_broker") == 0
    open_breaker()
    assert value(scrape(client), "circuit_breaker_state", service="mqtt_broker") == 2
