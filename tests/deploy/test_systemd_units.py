"""deploy/systemd/: the units verify, and every command they run is the project's own."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands

from apps.core.tasks.celery_settings import QUEUES, beat_argv
from apps.monitoring import stack
from tests.services import ROOT

UNITS = ROOT / "deploy" / "systemd"
INSTALL_DIR = "/opt/intelliwiz"
ENV_FILE = "/etc/intelliwiz/env"
PYTHON = f"{INSTALL_DIR}/.venv/bin/python"
Unit = dict[str, dict[str, list[str]]]


def read_unit(name: str) -> Unit:
    """Sections -> key -> values (systemd allows a key more than once)."""
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start(name: str) -> list[str]:
    (command,) = read_unit(name)["Service"]["ExecStart"]
    return shlex.split(command)


def seconds(timespan: str) -> int:
    """A systemd time span such as `4h 10min` in seconds."""
    units = {"h": 3600, "min": 60, "s": 1}
    parts = re.findall(r"(\d+)\s*(h|min|s)\b", timespan)
    assert parts, f"cannot read the time span {timespan!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


SERVICES = sorted(path.name for path in UNITS.glob("*.service"))
LONG_RUNNING = [name for name in SERVICES if name != "message-bus-health.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verifies_every_unit_and_queue_instance_without_a_warning(
    tmp_path: Path,
):
    """The units as installed, with the install dir pointing at this checkout."""
    env_file = tmp_path / "env"
    env_file.touch()
    for path in UNITS.glob("*.*"):
        if path.is_dir():  # a drop-in for a distribution's unit (mosquitto.service.d)
            continue
        text = path.read_text().replace(INSTALL_DIR, str(ROOT)).replace(ENV_FILE, str(env_file))
        (tmp_path / path.name).write_text(text)
    instances = [f"celery@{queue.name}.service" for queue in QUEUES]
    for instance in instances:
        shutil.copy(tmp_path / "celery@.service", tmp_path / instance)
    units = [name for name in os.listdir(tmp_path) if "@." not in name and name != "env"]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(units)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    assert set(instances) <= set(units)


def test_the_worker_template_runs_the_one_source_worker_for_its_instance_queue():
    assert exec_start("celery@.service") == [PYTHON, "-m", "apps.core.worker", "%i"]
    assert importlib.util.find_spec("apps.core.worker") is not None
    # The instances the unit documents are exactly the queues of celery_settings.
    header = (UNITS / "celery@.service").read_text().split("[Unit]")[0]
    assert re.findall(r"celery@(\w+)", header) == [queue.name for queue in QUEUES]


def test_the_worker_template_waits_for_the_longest_task_before_killing_it():
    (timeout,) = read_unit("celery@.service")["Service"]["TimeoutStopSec"]
    assert seconds(timeout) > max(queue.time_limit for queue in QUEUES)


@pytest.mark.parametrize(
    ("unit", "lane"),
    [("mqtt-subscriber.service", "routine"), ("mqtt-subscriber-urgent.service", "urgent")],
)
def test_the_subscriber_units_run_the_mqtt_subscriber_management_command_one_lane_each(
    unit: str, lane: str
):
    assert exec_start(unit) == [
        PYTHON,
        f"{INSTALL_DIR}/manage.py",
        "mqtt_subscriber",
        "--lane",
        lane,
    ]
    assert "mqtt_subscriber" in get_commands()


def test_the_daphne_unit_serves_what_make_run_serves():
    argv = exec_start("daphne.service")
    expanded = [
        part.replace("${HTTP_HOST}", settings.HTTP_HOST).replace(
            "${HTTP_PORT}", str(settings.HTTP_PORT)
        )
        for part in argv
    ]
    programs = stack.programs(stack.StackPaths(Path(settings.VAR_DIR)))
    (daphne,) = [program for program in programs if program.name == "daphne"]
    assert argv[0] == f"{INSTALL_DIR}/.venv/bin/python"
    assert expanded[1:] == daphne.command[1:]


def test_the_beat_unit_runs_the_one_source_beat_command():
    argv = exec_start("celerybeat.service")
    schedule = argv[argv.index("--schedule") + 1]
    assert argv == [f"{INSTALL_DIR}/.venv/bin/celery", *beat_argv(schedule)[1:]]
    assert schedule.startswith("/var/lib/intelliwiz/")
    assert read_unit("celerybeat.service")["Service"]["StateDirectory"] == ["intelliwiz"]


def test_the_timer_runs_the_health_script_every_60_seconds():
    timer = read_unit("message-bus-health.timer")["Timer"]
    assert timer["Unit"] == ["message-bus-health.service"]
    assert [seconds(value) for value in timer["OnUnitActiveSec"]] == [60]
    (script,) = exec_start("message-bus-health.service")
    local = ROOT / script.removeprefix(INSTALL_DIR + "/")
    assert local == ROOT / "scripts" / "health_check_message_bus.sh"
    assert os.access(local, os.X_OK)


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_service_hands_its_processes_the_metrics_directory(name: str):
    service = read_unit(name)["Service"]
    assert "PROMETHEUS_MULTIPROC_DIR=/run/intelliwiz/prometheus" in service["Environment"]
    assert service["RuntimeDirectory"] == ["intelliwiz/prometheus"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_runs_unprivileged_from_the_install_dir_with_the_env_file(name: str):
    service = read_unit(name)["Service"]
    assert service["User"] == ["intelliwiz"]
    assert service["WorkingDirectory"] == [INSTALL_DIR]
    assert service["EnvironmentFile"] == [ENV_FILE]


def test_the_brokers_open_file_limit_is_above_its_connection_limit():
    """A socket per device: past its soft limit Mosquitto refuses devices it is allowed."""
    drop_in = read_unit("mosquitto.service.d/limits.conf")
    (limit,) = drop_in["Service"]["LimitNOFILE"]
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    (connections,) = re.findall(r"^max_connections\s+(\d+)", conf, re.MULTILINE)
    assert int(limit) > int(connections)
