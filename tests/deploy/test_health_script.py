"""scripts/health_check_message_bus.sh against a real `make run` stack."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
    ("program", "failing_lines"),
    [
        # The process line matches any subscriber on the host; the "connected" line reads this
        # stack's Redis, and names what no subscriber reads while the urgent lane still runs.
        (
            "mqtt_subscriber",
            {
                "/monitoring/health/": "mqtt_subscriber",
                "mqtt subscriber connected": "no connected subscriber reads guard/, device/",
            },
        ),
        ("daphne", {"/monitoring/health/": "no answer from"}),
        ("celery:critical", {"celery critical": "critical@"}),
        ("mosquitto", {"mqtt broker": "$SYS/broker/uptime"}),
        ("redis", {"redis": "no PONG"}),
    ],
)
def test_it_exits_1_naming_the_part_that_was_stopped(
    running_stack: Stack, program: str, failing_lines: dict[str, str]
):
    running_stack.supervisorctl("stop", program)
    try:
        result = run_script(running_stack)
    finally:
        running_stack.supervisorctl("start", program)
        running_stack.wait_healthy(timeout=90)
    assert result.returncode == 1, result.stdout
    for component, named in failing_lines.items():
        failing = line(result.stdout, component)
        assert failing.startswith("FAIL "), result.stdout
        assert named in failing
    assert result.stdout.splitlines()[-1].startswith("UNHEALTHY: ")
    assert component in result.stdout.splitlines()[-1]


def test_no_secret_reaches_a_command_line_or_the_output_and_nothing_is_left_behind(
    running_stack: Stack, tmp_path: Path
):
    """`ps` shows every command line to every user, and the output goes to the journal.

    Redis is reached as an ACL user (REDIS_URL=redis://<user>:<password>@…), the harder case:
    the stack's own URL, default user and password, is the healthy-stack test's."""
    import os
    import shutil

    import redis

    from tests.environment import canary, redis_url
    from tests.services import executable

    # Wrappers in front of the real programs record every command line the script runs.
    shims, argv_log = tmp_path / "bin", tmp_path / "argv.log"
    shims.mkdir()
    for program in ("curl", "mosquitto_sub", "redis-cli"):
        real = shutil.which(program) or executable(program)
        shim = shims / program
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "{argv_log}"\nexec {real} "$@"\n')
        shim.chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    redis_password, mqtt_password = canary("healthredis"), canary("healthmqtt")
    port = int(running_stack.env["REDIS_URL"].rsplit(":", 1)[1])
    admin = redis.Redis.from_url(running_stack.env["REDIS_URL"])
    admin.acl_setuser(
        "health-check", enabled=True, passwords=[f"+{redis_password}"], keys=["*"],
        channels=["*"], commands=["+@all"],
    )  # fmt: skip
    env = {
        **running_stack.env,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "TMPDIR": str(temp),
        "REDIS_URL": redis_url(port, user="health-check", password=redis_password),
        "MQTT_USERNAME": "health-check",
        "MQTT_PASSWORD": mqtt_password,
    }
    try:
        result = subprocess.run(
            [str(SCRIPT)], env=env, capture_output=True, text=True, timeout=90, check=False
        )
    finally:
        admin.acl_deluser("health-check")
    recorded = argv_log.read_text()
    for program in ("curl", "mosquitto_sub", "redis-cli"):
        assert f"/{program} " in recorded, f"{program} never ran:\n{result.stdout}"
    for secret in (running_stack.env["MONITORING_API_KEY"], redis_password, mqtt_password):
        assert secret not in recorded
        assert secret not in result.stdout + result.stderr
    assert (
        line(result.stdout, "redis")
        == f"OK   redis                        PONG from redis://***@127.0.0.1:{port}"
    )
    assert line(result.stdout, "mqtt subscriber connected").startswith("OK ")
    assert list(temp.iterdir()) == [], "the run left temporary files behind"
