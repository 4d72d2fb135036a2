"""scripts/health_check_message_bus.sh against a real `make run` stack."""

from __future__ import annotations

import subprocess

import pytest

from tests.services import ROOT, Stack

pytestmark = pytest.mark.stack

SCRIPT = ROOT / "scripts" / "health_check_message_bus.sh"


def run_script(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)], env=stack.env, capture_output=True, text=True, timeout=90, check=False
    )


def line(output: str, component: str) -> str:
    """The script's line for one component: `OK|FAIL  <component>  <detail>`."""
    matches = [text for text in output.splitlines() if text[5:].startswith(component + " ")]
    assert len(matches) == 1, f"no single line for {component!r} in:\n{output}"
    return matches[0]


def test_it_exits_0_with_a_line_per_component_on_a_healthy_stack(running_stack: Stack):
    result = run_script(running_stack)
    assert result.returncode == 0, result.stdout + result.stderr
    components = [
        "redis",
        "mqtt broker",
        "celery critical",
        "celery high_priority",
        "celery general",
        "celery ml_training",
        "celery external_api",
        "mqtt subscriber process",
        "mqtt subscriber connected",
        "channel layer",
        "metrics endpoint",
        "/monitoring/health/",
    ]
    for component in components:
        assert line(result.stdout, component).startswith("OK "), result.stdout
    assert result.stdout.rstrip().endswith("All message bus components healthy")


@pytest.mark.parametrize(
    ("program", "component", "named"),
    [
        ("mqtt_subscriber", "/monitoring/health/", "mqtt_subscriber"),
        # The process line matches any subscriber on the host; this one reads this stack's Redis.
        ("mqtt_subscriber", "mqtt subscriber connected", "no subscriber connected"),
        ("daphne", "/monitoring/health/", "no answer from"),
        ("celery:critical", "celery critical", "critical@"),
        ("mosquitto", "mqtt broker", "$SYS/broker/uptime"),
        ("redis", "redis", "no PONG"),
    ],
)
def test_it_exits_1_naming_the_part_that_was_stopped(
    running_stack: Stack, program: str, component: str, named: str
):
    running_stack.supervisorctl("stop", program)
    try:
        result = run_script(running_stack)
    finally:
        running_stack.supervisorctl("start", program)
        running_stack.wait_healthy(timeout=90)
    assert result.returncode == 1, result.stdout
    failing = line(result.stdout, component)
    assert failing.startswith("FAIL "), result.stdout
    assert named in failing
    assert result.stdout.splitlines()[-1].startswith("UNHEALTHY: ")
    assert component in result.stdout.splitlines()[-1]
