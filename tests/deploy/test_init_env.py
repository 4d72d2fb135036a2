"""scripts/init_env.py: `make run`'s first .env has a Redis password, and an older one gets one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dotenv import dotenv_values

from tests.services import ROOT

SCRIPT = ROOT / "scripts" / "init_env.py"


def init_env(target: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def redis_password(target: Path) -> str | None:
    return urlsplit(dotenv_values(target)["REDIS_URL"] or "").password


def test_a_new_env_file_is_private_and_gives_make_runs_redis_a_password(tmp_path: Path):
    target = tmp_path / ".env"
    assert "Wrote" in init_env(target)
    assert target.stat().st_mode & 0o777 == 0o600
    assert len(redis_password(target) or "") >= 32
    assert urlsplit(dotenv_values(target)["REDIS_URL"] or "").port == 6379

    before = target.read_text()
    assert init_env(target) == ""
    assert target.read_text() == before, "an existing .env is never rewritten"


@pytest.mark.parametrize(
    ("old", "port"),
    [
        ("DJANGO_DEBUG=true\n", 6379),  # written before REDIS_URL was in it
        ("DJANGO_DEBUG=true\nREDIS_URL=redis://127.0.0.1:16379\nMQTT_PORT=11883\n", 16379),
    ],
)
def test_an_env_file_without_a_redis_password_gets_one_and_says_so(
    tmp_path: Path, old: str, port: int
):
    target = tmp_path / ".env"
    target.write_text(old)
    assert "Added a Redis password to REDIS_URL" in init_env(target)
    values = dotenv_values(target)
    assert len(redis_password(target) or "") >= 32
    assert urlsplit(values["REDIS_URL"] or "").port == port
    assert values["DJANGO_DEBUG"] == "true"
    assert init_env(target) == "", "a password is added once"


def test_a_redis_elsewhere_is_left_as_it_is(tmp_path: Path):
    """`make run` does not start that Redis, so it cannot give it a password."""
    target = tmp_path / ".env"
    target.write_text("REDIS_URL=redis://redis.example.com:6379\n")
    assert init_env(target) == ""
    assert target.read_text() == "REDIS_URL=redis://redis.example.com:6379\n"
