"""`manage.py stackctl`: the runbook's unit names as aliases, one clear refusal of a bad name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from apps.core.tasks.celery_settings import QUEUES
from apps.monitoring import stack
from apps.monitoring.management.commands.stackctl import resolve
from tests.services import ROOT


def paths() -> stack.StackPaths:
    return stack.StackPaths(Path(settings.VAR_DIR))


def test_stackctl_takes_the_runbooks_unit_names_for_every_queues_worker_and_service():
    unit_names = [f"celery@{queue.name}" for queue in QUEUES]
    unit_names += ["celery@*", "celery-beat", "mqtt-subscriber", "mqtt-subscriber-urgent"]
    unit_names += ["redis-server", "daphne", "mosquitto", "celerybeat"]

    assert resolve("restart", unit_names, paths()) == [
        *(f"celery:{queue.name}" for queue in QUEUES),
        "celery:*",
        "celerybeat",
        "mqtt_subscriber",
        "mqtt_subscriber_urgent",
        "redis",
        "daphne",
        "mosquitto",
        "celerybeat",
    ]
    assert resolve("signal", ["KILL", "celery@general"], paths()) == ["KILL", "celery:general"]
    assert resolve("tail", ["-f", "mqtt-subscriber", "stderr"], paths()) == [
        "-f",
        "mqtt_subscriber",
        "stderr",
    ]


def test_a_wrong_name_is_refused_before_anything_runs_with_every_valid_name_and_alias():
    with pytest.raises(CommandError) as refused:
        call_command("stackctl", "restart", "celery@general", "celery@nope", "mqtt-subscribr")

    message = str(refused.value)
    assert message.startswith("no such program: celery@nope, mqtt-subscribr.")
    for queue in QUEUES:
        assert f"  celery:{queue.name}  (or celery@{queue.name})\n" in message
    assert "  mqtt_subscriber  (or mqtt-subscriber)\n" in message
    assert "  celerybeat  (or celery-beat)\n" in message

    # As an operator sees it: one message, exit status 1, and supervisorctl never ran.
    result = subprocess.run(
        [sys.executable, "manage.py", "stackctl", "restart", "mqtt-subscribr"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("no such program") == 1
    assert "no such process" not in result.stdout + result.stderr
