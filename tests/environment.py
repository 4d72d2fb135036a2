"""Loaded with `-p tests.environment` before pytest-django reads the settings.

It reserves free ports and a scratch directory for the real services the tests start, and
points the settings at them, so a test run never touches the developer's own stack or `.env`.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SCRATCH = Path(tempfile.mkdtemp(prefix="intelliwiz-tests-"))
REDIS_PORT = free_port()
MQTT_PORT = free_port()

os.environ.update(
    {
        "ENV_FILE": "",
        "DJANGO_DEBUG": "true",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(32),
        "CHANNELS_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "VAR_DIR": str(SCRATCH / "var"),
        # Before anything imports prometheus_client: this process and the services the tests
        # start write their metrics where /metrics/export/ reads them, as under `make run`.
        "PROMETHEUS_MULTIPROC_DIR": str(SCRATCH / "var" / "prometheus"),
        # The test database itself: worker and subscriber processes started by the tests
        # read and write the same file as the test (pytest-django creates it fresh).
        "DATABASE_URL": f"sqlite:///{SCRATCH / 'test.sqlite3'}",
        "TEST_SQLITE_PATH": str(SCRATCH / "test.sqlite3"),
        "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}",
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(MQTT_PORT),
        "MQTT_CLIENT_ID": f"test-subscriber-{secrets.token_hex(4)}",
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        # The shortest silence that makes a device OFFLINE: tests wait a whole period of it.
        "DEVICE_OFFLINE_AFTER": "10",
        # Unconfirmed NOC events are resent by the resend task once this old (core/outbox.py).
        "BROADCAST_RESEND_AFTER_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
)
(SCRATCH / "var").mkdir(parents=True, exist_ok=True)
(SCRATCH / "var" / "static").mkdir(exist_ok=True)
(SCRATCH / "var" / "prometheus").mkdir(exist_ok=True)


def pytest_unconfigure() -> None:
    import shutil

    if os.environ.get("TEST_KEEP_SCRATCH"):
        print(f"\ntest scratch directory kept: {SCRATCH}")
        return
    shutil.rmtree(SCRATCH, ignore_errors=True)
