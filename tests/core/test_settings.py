"""Settings fail loudly and by name; each case runs Django in a fresh process."""

import os
import subprocess
import sys

import pytest

from tests import environment
from tests.environment import canary
from tests.services import ROOT


def django_check(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **overrides}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_production_refuses_to_start_without_a_secret_key():
    result = django_check(DJANGO_DEBUG="false", DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_a_channels_encryption_key():
    result = django_check(DJANGO_DEBUG="false", CHANNELS_ENCRYPTION_KEY="")
    assert result.returncode != 0
    assert "CHANNELS_ENCRYPTION_KEY must be set outside DEBUG" in result.stderr


def test_production_refuses_a_redis_url_without_a_password_unless_told_it_is_on_purpose():
    production = {
        "DJANGO_DEBUG": "false",
        "MQTT_USERNAME": "intelliwiz",
        "MQTT_PASSWORD": canary("mqtt"),
        "MONITORING_API_KEY": canary("monitoring"),
    }
    # A password put where the user name goes is no password (and must not be shown either).
    mistaken = f"redis://{environment.REDIS_PASSWORD}@127.0.0.1:6379"
    refused = django_check(**production, REDIS_URL=mistaken)
    assert refused.returncode != 0
    assert "REDIS_URL='redis://***@127.0.0.1:6379' has no password" in refused.stderr
    assert "REDIS_ALLOW_NO_PASSWORD=true" in refused.stderr
    assert environment.REDIS_PASSWORD not in refused.stderr

    allowed = django_check(
        **production, REDIS_URL="redis://127.0.0.1:6379", REDIS_ALLOW_NO_PASSWORD="true"
    )
    assert "REDIS_URL" not in allowed.stderr, allowed.stderr


def test_an_invalid_fernet_key_is_named():
    result = django_check(CHANNELS_ENCRYPTION_KEY="not-a-key")
    assert result.returncode != 0
    assert "CHANNELS_ENCRYPTION_KEY is not a valid Fernet key" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG='maybe' is not a boolean"),
        ("MQTT_PORT", "eighty", "MQTT_PORT='eighty' is not a whole number"),
        ("MQTT_PORT", "0", "MQTT_PORT=0 must be at least 1"),
        ("REDIS_URL", "redis://:pw@127.0.0.1:6379/3", "'redis://***@127.0.0.1:6379/3' must not"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' must be console or json"),
        ("SQLITE_SYNCHRONOUS", "off", "SQLITE_SYNCHRONOUS='OFF' must be FULL or NORMAL"),
        ("MAX_MESSAGE_AGE_DAYS", "30", "MAX_MESSAGE_AGE_DAYS=30 must not exceed"),
        ("JWT_SIGNING_KEY", "short-key", "JWT_SIGNING_KEY is 9 characters; use at least 32"),
        ("MONITORING_API_KEY", "x" * 31, "MONITORING_API_KEY is 31 characters; use at least 32"),
        ("TRUSTED_PROXIES", "nginx", "TRUSTED_PROXIES: 'nginx' is not an IP address or network"),
        ("ANOMALY_CONTAMINATION", "5", "ANOMALY_CONTAMINATION=5 must be between 0 and 1"),
        ("DEVICE_REPORT_INTERVALS", "gateway=5", "DEVICE_REPORT_INTERVALS: gateway=5 must be at"),
        ("DEVICE_EVENT_ONLY_KINDS", "panic,smoke", "DEVICE_EVENT_ONLY_KINDS names no device kind"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(variable: str, value: str, message: str):
    result = django_check(**{variable: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_the_test_environment_itself_passes_the_checks():
    result = django_check()
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_a_committed_batch_is_on_disk_before_the_database_returns():
    # A batch whose MQTT messages were acknowledged must survive a power cut. SQLite:
    # synchronous=FULL (2), the WAL fsynced at every commit (NORMAL, 1, could lose the last
    # commits). PostgreSQL: synchronous_commit on for the bus's sessions, whatever the server's
    # default (the suite's own server has it off).
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
            return
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 2
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


@pytest.mark.django_db(transaction=True)
def test_a_process_keeps_its_sqlite_connection_from_one_task_or_request_to_the_next():
    # What Celery (before and after each task) and Django (around each request) call: a
    # connection opened per task cost a critical alert milliseconds of CPU.
    from django.db import close_old_connections, connection

    connection.ensure_connection()
    opened = connection.connection
    close_old_connections()
    connection.ensure_connection()
    assert connection.connection is opened
