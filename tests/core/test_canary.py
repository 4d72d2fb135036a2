"""The canary scan (tests/canary.py) finds a planted secret, so its silence at the end of a
session means something."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import jwt

from tests.canary import scan_logs
from tests.services import ROOT

MARK = "canaryfeedf00d"
CANARIES = {"redis": f"{MARK}redisXq3-v_9ZkPa7_ue2Rt0", "fernet": f"{MARK}fernetAb+/cd9Lm0pQ=="}


def plant(directory: Path, name: str, lines: list[str]) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_scan_finds_each_form_of_a_canary_in_any_log_and_never_prints_it(tmp_path: Path):
    redis, fernet = CANARIES["redis"], CANARIES["fernet"]
    issued = jwt.encode({"user_id": "7"}, redis, algorithm="HS256")
    forged = jwt.encode(
        {"user_id": "7"}, "a key that is not a canary of this run", algorithm="HS256"
    )
    log = plant(
        tmp_path,
        "log/worker.log",
        [
            "starting",
            f"connecting to redis://:{redis}@127.0.0.1:6379/0",
            f"Authorization: Basic {base64.b64encode(f'x:{redis}'.encode()).decode()}",
            f"key={quote(fernet, safe='')}",
            f"token {issued}",
            f"refused token {forged}",
            f"truncated {redis[:20]}",
        ],
    )
    plant(tmp_path, "var/mosquitto/log", [f"user {redis}"])
    plant(tmp_path, "redis/auth.conf", [f"requirepass {redis}"])  # a config, not a log

    leaks = scan_logs([tmp_path], CANARIES, MARK)

    found = {(Path(leak.where).name, leak.line, leak.what) for leak in leaks}
    assert found == {
        ("worker.log", 2, "the redis canary"),
        ("worker.log", 3, "the redis canary, base64"),
        ("worker.log", 4, "the fernet canary, URL-encoded"),
        ("worker.log", 5, "a JWT signed with the redis canary"),
        ("worker.log", 7, "this run's canary mark (part of a secret)"),
        ("log", 1, "the redis canary"),
    }
    assert str(leaks[0]).startswith(f"{log}:")
    assert not any(secret in str(leak) for leak in leaks for secret in (redis, fernet, MARK))


def test_a_session_whose_logs_hold_a_canary_fails_naming_the_file_and_line(tmp_path: Path):
    """A whole pytest session, as `make test` runs one, with a test that leaks into a log."""
    plant(
        tmp_path,
        "test_leak.py",
        [
            "from tests import environment",
            "",
            "def test_it_logs_the_jwt_signing_key():",
            "    log = environment.SCRATCH / 'log' / 'planted.log'",
            "    log.parent.mkdir(exist_ok=True)",
            "    log.write_text('one\\nkey=' + environment.JWT_SIGNING_KEY + '\\n')",
        ],
    )
    session = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml")),
            # The suite's own plugins (tests.environment, tests.canary), not Django's: faster.
            *("--rootdir", str(ROOT), "-p", "no:cacheprovider", "-p", "no:django"),
            *("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:anyio"),
            *("-W", "ignore::pytest.PytestConfigWarning"),
            str(tmp_path / "test_leak.py"),
        ],
        cwd=ROOT,
        # Its scratch directory (kept, as it holds the leak) lands in this test's own.
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = session.stdout + session.stderr
    assert session.returncode == 1, output
    assert "1 passed" in output
    assert "a secret of the test run is in a log" in output
    assert "/log/planted.log:2: the jwt canary" in output
    assert "key=canary" not in output
