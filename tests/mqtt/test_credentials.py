"""device_password + sync_mqtt_credentials against a real Mosquitto that requires passwords."""

from __future__ import annotations

import getpass
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.deploy.test_broker_configs import connack
from tests.environment import free_port
from tests.factories import create_tenant_with_devices
from tests.services import Service, executable, port_open, wait_for

pytestmark = pytest.mark.django_db


def test_a_device_can_log_in_once_its_password_is_synced_and_the_broker_reloaded(
    tmp_path: Path, settings
):
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text("")
    acl.write_text("")
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {acl}\nuser {getpass.getuser()}\nlog_dest stdout\n"
    )
    broker = Service(
        "mosquitto",
        [executable("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
        tmp_path / "mosquitto.log",
    )
    try:
        wait_for(lambda: port_open(port), timeout=10, what="mosquitto")
        (tmp_path / "mosquitto.pid").write_text(str(broker.pid))
        settings.MQTT_USERNAME, settings.MQTT_PASSWORD = "intelliwiz", "app-secret"
        settings.MQTT_PASSWORD_FILE, settings.MQTT_ACL_FILE = passwd, acl
        create_tenant_with_devices("acme", "dev-001", "dev-002")

        out = StringIO()
        call_command("device_password", "--id", "dev-001", stdout=out, stderr=StringIO())
        password = out.getvalue().strip()
        assert connack(port, "dev-001", password).is_failure

        report = StringIO()
        call_command(
            "sync_mqtt_credentials", "--reload-pid-file", str(tmp_path / "mosquitto.pid"),
            stdout=report,
        )  # fmt: skip
        assert "1 devices have no MQTT password yet" in report.getvalue()
        wait_for(
            lambda: not connack(port, "dev-001", password).is_failure,
            timeout=10,
            what="the reloaded broker to accept dev-001",
        )
        assert connack(port, "dev-001", "wrong").is_failure
        assert not connack(port, "intelliwiz", "app-secret").is_failure
        assert oct(passwd.stat().st_mode & 0o777) == "0o640"
        assert "dev-001:$7$101$" in passwd.read_text()
        assert password not in passwd.read_text()
    finally:
        broker.stop()


def test_sync_refuses_without_the_application_account(settings):
    settings.MQTT_USERNAME = ""
    with pytest.raises(CommandError, match="MQTT_USERNAME and MQTT_PASSWORD must be set"):
        call_command("sync_mqtt_credentials", "--no-reload")
