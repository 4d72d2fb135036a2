"""deploy/logrotate/: every log the systemd units write is rotated, by a real logrotate."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

from tests.services import ROOT, executable

CONFIG = ROOT / "deploy" / "logrotate" / "intelliwiz"


def unit_logs() -> list[str]:
    """The files the units append to, `%i` (the queue) standing for any name."""
    paths = []
    for unit in (ROOT / "deploy" / "systemd").glob("*.service"):
        paths += re.findall(r"^StandardOutput=append:(\S+)", unit.read_text(), re.MULTILINE)
    return [path.replace("%i", "general") for path in paths]


def patterns() -> list[str]:
    return [line.strip() for line in CONFIG.read_text().splitlines() if line.startswith("/")]


def test_every_log_a_unit_writes_is_rotated():
    logs = unit_logs()
    assert logs
    for path in logs:
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns()), path


def test_logrotate_rotates_in_place_and_compresses_on_the_next_round(tmp_path: Path):
    root = tmp_path / "log"
    config = tmp_path / "intelliwiz"
    config.write_text(CONFIG.read_text().replace("/var/log/", f"{root}/"))
    logs = [root / path.removeprefix("/var/log/") for path in unit_logs()]
    for log in logs:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("a line\n")
    state = tmp_path / "state"

    def rotate() -> None:
        argv = [executable("logrotate"), "--force", "--state", str(state), str(config)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr

    rotate()
    for log in logs:
        assert log.stat().st_size == 0, log  # truncated in place: the unit's handle stays valid
        assert log.with_name(log.name + ".1").read_text() == "a line\n"
    for log in logs:
        log.write_text("another line\n")
    rotate()
    for log in logs:
        assert log.with_name(log.name + ".2.gz").exists(), log  # compressed one round later
