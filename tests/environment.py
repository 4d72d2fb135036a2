"""Loaded with `-p tests.environment` before pytest-django reads the settings.

It reserves free ports and a scratch directory for the real services the tests start, and
points the settings at them, so a test run never touches the developer's own stack or `.env`.
"""

from __future__ import annotations

import atexit
import base64
import os
import secrets
import socket
import tempfile
from pathlib import Path

import pytest

from tests import postgres
from tests.postgres import Postgres


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Canary secrets: every secret the suite hands out carries this run's mark, and the session
# fails if a log it produced holds one (tests/canary.py, run at the end of the session).
CANARY_MARK = f"canary{secrets.token_hex(4)}"
CANARIES: dict[str, str] = {}  # what each canary stands for -> its value


def _register(role: str, value: str) -> str:
    CANARIES[role if role not in CANARIES else f"{role} #{len(CANARIES)}"] = value
    return value


def canary(role: str) -> str:
    """A fresh secret for `role` (letters only) that the log scan recognises."""
    return _register(role, f"{CANARY_MARK}{role}{secrets.token_urlsafe(18)}")


def fernet_canary(role: str) -> str:
    """A valid Fernet key (base64 of 32 bytes) that begins with this run's mark."""
    text = f"{CANARY_MARK}{role}{secrets.token_urlsafe(32)}"[:43] + "="
    return _register(role, base64.urlsafe_b64encode(base64.urlsafe_b64decode(text)).decode())


SCRATCH = Path(tempfile.mkdtemp(prefix="intelliwiz-tests-"))
REDIS_PORT = free_port()
MQTT_PORT = free_port()
REDIS_PASSWORD = canary("redis")
JWT_SIGNING_KEY = canary("jwt")
OPERATOR_PASSWORD = canary("operator")


# `make test DB=postgres` runs the whole suite on a PostgreSQL server of its own.
TEST_DATABASE = os.environ.get("TEST_DATABASE", "sqlite") or "sqlite"
POSTGRES: Postgres | None = None
if TEST_DATABASE == "postgres":
    POSTGRES = Postgres(free_port(), canary("postgres")).start(create_database=False)
    atexit.register(POSTGRES.stop)
    # The test database itself: the test runner recreates it under the URL's own name, and
    # worker and subscriber processes started by the tests connect to it with the same URL.
    DATABASE_ENV = {"DATABASE_URL": POSTGRES.url, "TEST_DATABASE_NAME": postgres.DATABASE}
elif TEST_DATABASE == "sqlite":
    # Worker and subscriber processes read and write the same file as the test.
    DATABASE_ENV = {
        "DATABASE_URL": f"sqlite:///{SCRATCH / 'test.sqlite3'}",
        "TEST_SQLITE_PATH": str(SCRATCH / "test.sqlite3"),
    }
else:
    raise pytest.UsageError(f"TEST_DATABASE={TEST_DATABASE!r}: use sqlite or postgres (make DB=)")


def redis_url(
    port: int, *, user: str = "", password: str = REDIS_PASSWORD, host: str = "127.0.0.1"
) -> str:
    """The URL of a test Redis on `port`, carrying its password as every client reads it."""
    return f"redis://{user}:{password}@{host}:{port}"


os.environ.update(
    {
        "ENV_FILE": "",
        "DJANGO_DEBUG": "true",
        "DJANGO_SECRET_KEY": canary("django"),
        "JWT_SIGNING_KEY": JWT_SIGNING_KEY,
        "CHANNELS_ENCRYPTION_KEY": fernet_canary("fernet"),
        "VAR_DIR": str(SCRATCH / "var"),
        # Before anything imports prometheus_client: this process and the services the tests
        # start write their metrics where /metrics/export/ reads them, as under `make run`.
        "PROMETHEUS_MULTIPROC_DIR": str(SCRATCH / "var" / "prometheus"),
        **DATABASE_ENV,
        "REDIS_URL": redis_url(REDIS_PORT),
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(MQTT_PORT),
        "MQTT_CLIENT_ID": f"test-subscriber-{secrets.token_hex(4)}",
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        # The shortest silence that makes a device OFFLINE: tests wait a whole period of it.
        "DEVICE_OFFLINE_AFTER": "10",
        # Unconfirmed NOC events are resent by the resend task once this old (core/outbox.py).
        "BROADCAST_RESEND_AFTER_SECONDS": "2",
        # Notifications (apps/notifications): a receiver that hangs fails in a second, retries
        # follow within a second, and storm windows end within the test.
        "NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS": "1",
        "NOTIFICATION_RETRY_BASE_SECONDS": "0.2",
        "NOTIFICATION_RETRY_MAX_SECONDS": "1",
        "NOTIFICATION_MAX_PER_WINDOW": "5",
        "NOTIFICATION_WINDOW_SECONDS": "4",
        # E-mail as files the tests read (the worker that sends it is another process).
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(SCRATCH / "mail"),
        # Workers look for a newly trained anomaly model this often (apps/anomaly/registry.py).
        "ANOMALY_MODEL_CHECK_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
)
(SCRATCH / "var").mkdir(parents=True, exist_ok=True)
(SCRATCH / "var" / "static").mkdir(exist_ok=True)
(SCRATCH / "var" / "prometheus").mkdir(exist_ok=True)


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path factory reads the option
def pytest_configure(config: pytest.Config) -> None:
    # tmp_path lives in the scratch directory too, so the canary scan reads the logs of the
    # stacks and services tests start there, and the whole run is removed at the end.
    if config.option.basetemp is None:
        config.option.basetemp = str(SCRATCH / "tmp")


_keep_scratch = bool(os.environ.get("TEST_KEEP_SCRATCH"))


def keep_scratch() -> None:
    """Leave the scratch directory for a person to look at (the canary scan found a secret)."""
    global _keep_scratch
    _keep_scratch = True


def pytest_unconfigure() -> None:
    import shutil

    if POSTGRES is not None:
        POSTGRES.stop()

    if _keep_scratch:
        print(f"\ntest scratch directory kept: {SCRATCH}")
        return
    shutil.rmtree(SCRATCH, ignore_errors=True)
