"""device_password + sync_mqtt_credentials against a real Mosquitto that requires passwords."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.deploy.test_broker_configs import connack
from tests.environment import free_port
from tests.factories import create_tenant_with_devices
from tests.services import ROOT, Service, executable, port_open, wait_for

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


def test_a_planted_staging_file_cannot_catch_the_password_file(tmp_path: Path):
    """Someone who can write the directory plants the staging name as a link to a file of
    theirs: the secret must not be written through it, and the result is private."""
    import stat

    from apps.mqtt.credentials import write_private

    target = tmp_path / "passwd"
    catcher = tmp_path / "attacker-readable"
    catcher.write_text("")
    (tmp_path / ".passwd.tmp").symlink_to(catcher)

    write_private(target, "device-1:$7$secret-hash\n")

    assert catcher.read_text() == ""
    assert target.read_text() == "device-1:$7$secret-hash\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not target.is_symlink()


@pytest.mark.parametrize(
    "device_id", ["sensor-1\n", "sensor/1", "", "-leading-dash", "x" * 65, "sensor 1", "+", "#"]
)
def test_an_id_that_is_not_a_device_id_cannot_be_registered(device_id: str):
    from apps.devices.models import Device
    from apps.devices.services import register_device

    tenant = create_tenant_with_devices("acme")
    with pytest.raises(ValueError, match="not a device id"):
        register_device(tenant, device_id, "sensor")
    assert not Device.objects.exists()


@pytest.mark.parametrize("device_id", ["sensor-1\n", "sensor-1\r", "sensor-1\x00"])
def test_a_trailing_newline_does_not_pass_for_a_device_id_anywhere(device_id: str):
    from apps.mqtt.downlink import InvalidCommandError, check_command
    from apps.mqtt.topics import TopicError, parse_topic

    with pytest.raises(TopicError, match="source id"):
        parse_topic(f"device/{device_id}/telemetry")
    with pytest.raises(InvalidCommandError, match="not a device id"):
        check_command(device_id, "reboot")
    with pytest.raises(InvalidCommandError, match="command must be"):
        check_command("sensor-1", "reboot\n")


@pytest.mark.parametrize("name", ["MQTT_CLIENT_ID", "MQTT_USERNAME", "MQTT_RESERVED_CLIENT_IDS"])
def test_no_device_can_be_registered_under_an_application_mqtt_name(name: str, settings):
    """On the device listener a device's client id is its id: under the subscriber's client id
    it would take over the subscriber's session."""
    from django.core.exceptions import ValidationError

    from apps.devices.models import Device
    from apps.devices.services import register_device

    application = {
        "MQTT_CLIENT_ID": "bus-subscriber",
        "MQTT_USERNAME": "bus-account",
        "MQTT_RESERVED_CLIENT_IDS": "bus-subscriber-b",
    }
    settings.DEVICE_RESERVED_IDS = frozenset(application.values())
    tenant = create_tenant_with_devices("acme")

    with pytest.raises(ValueError, match=f"reserved for the application.*{name}"):
        register_device(tenant, application[name], "sensor")
    with pytest.raises(CommandError, match="reserved for the application"):
        call_command(
            "register_device", "--tenant", "acme", "--id", application[name], "--kind", "sensor"
        )
    with pytest.raises(ValidationError, match="reserved for the application"):  # the admin's way
        Device(tenant=tenant, device_id=application[name], kind="sensor").full_clean()
    assert not Device.objects.exists()


def test_the_subscribers_own_ids_are_reserved_by_default():
    from django.conf import settings as loaded

    assert {loaded.MQTT_CLIENT_ID} <= loaded.DEVICE_RESERVED_IDS


def test_the_urgent_sessions_of_every_subscriber_are_reserved_and_refused_to_devices(settings):
    """`mqtt_subscriber --lane urgent` is `<client id>-urgent`: a device under that name would
    take over the alerts' session, on this host or on a shared group's other member."""
    environment = {
        **os.environ,
        "MQTT_CLIENT_ID": "bus-subscriber",
        "MQTT_RESERVED_CLIENT_IDS": "bus-subscriber-b",
        "MQTT_USERNAME": "bus-account",
    }
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from intelliwiz_config import settings as s; "
            "print(','.join(sorted(s.DEVICE_RESERVED_IDS)))",
        ],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reserved = frozenset(loaded.stdout.strip().split(","))
    assert reserved == {
        "bus-account",
        "bus-subscriber",
        "bus-subscriber-urgent",
        "bus-subscriber-b",
        "bus-subscriber-b-urgent",
    }
    from apps.devices.services import register_device

    settings.DEVICE_RESERVED_IDS = reserved
    tenant = create_tenant_with_devices("acme")
    for device_id in ("bus-subscriber-urgent", "bus-subscriber-b-urgent"):
        with pytest.raises(ValueError, match="reserved for the application"):
            register_device(tenant, device_id, "panic_button")


def test_auto_registration_does_not_register_a_device_under_an_application_name(settings):
    from apps.devices.models import Device
    from apps.mqtt.intake import Intake, Reason, Rejection
    from tests.factories import telemetry

    settings.DEVICE_AUTO_REGISTER, settings.DEVICE_AUTO_REGISTER_TENANT = True, "demo"
    settings.DEVICE_RESERVED_IDS = frozenset({"bus-subscriber"})

    outcome = Intake().check("device/bus-subscriber/telemetry", telemetry().encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.UNKNOWN_DEVICE
    assert not Device.objects.exists()


def test_sync_leaves_out_a_device_registered_under_an_application_name_before(
    tmp_path: Path, settings
):
    from apps.devices.models import Device
    from apps.mqtt.credentials import mosquitto_hash

    settings.MQTT_USERNAME, settings.MQTT_PASSWORD = "intelliwiz", "app-secret"
    settings.MQTT_PASSWORD_FILE, settings.MQTT_ACL_FILE = tmp_path / "passwd", tmp_path / "acl"
    settings.DEVICE_RESERVED_IDS = frozenset({"intelliwiz", "bus-subscriber"})
    tenant = create_tenant_with_devices("acme", "sensor-1")
    # Rows from before the rule, as the admin or a migration could have left them.
    for device_id in ("bus-subscriber", "intelliwiz", "sensor-1"):
        Device.objects.update_or_create(
            device_id=device_id,
            defaults={"tenant": tenant, "mqtt_password_hash": mosquitto_hash("x")},
        )
    errors = StringIO()

    call_command("sync_mqtt_credentials", "--no-reload", stdout=StringIO(), stderr=errors)

    users = [line.split(":")[0] for line in settings.MQTT_PASSWORD_FILE.read_text().splitlines()]
    assert users == ["intelliwiz", "sensor-1"]  # the application account, once
    assert "user bus-subscriber" not in settings.MQTT_ACL_FILE.read_text()
    assert "Left out bus-subscriber, intelliwiz" in errors.getvalue()
