"""Write Mosquitto's password file and ACL from the device registry, then reload the broker.

    manage.py sync_mqtt_credentials [--reload-pid-file FILE | --no-reload]

The application account is MQTT_USERNAME / MQTT_PASSWORD; devices log in with their device id
and the password from `manage.py device_password`, and may publish under the prefixes of their
kind (after changing a device's kind, sync again). A device under one of the application's names
(DEVICE_RESERVED_IDS) is left out. Files go to MQTT_PASSWORD_FILE and MQTT_ACL_FILE. The broker
re-reads both on SIGHUP (`systemctl reload mosquitto`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.devices.models import RESERVED_ID_RULE, Device, is_reserved_id
from apps.mqtt.credentials import (
    mosquitto_hash,
    render_acl,
    render_password_file,
    write_private,
)


class Command(BaseCommand):
    help = "Write Mosquitto's password file and ACL from the device registry; reload the broker."

    def add_arguments(self, parser: CommandParser) -> None:
        reload = parser.add_mutually_exclusive_group()
        reload.add_argument("--reload-pid-file", type=Path, help="send SIGHUP to this pid")
        reload.add_argument("--no-reload", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.MQTT_USERNAME or not settings.MQTT_PASSWORD:
            raise CommandError(
                "MQTT_USERNAME and MQTT_PASSWORD must be set: they are the application's "
                "account, the only one allowed to read every device's messages"
            )
        with_password = Device.objects.exclude(mqtt_password_hash="").values_list(
            "device_id", "kind", "mqtt_password_hash"
        )
        # Registration refuses these ids; a row from before that rule must not log in as one.
        reserved = [row[0] for row in with_password if is_reserved_id(row[0])]
        devices = [row for row in with_password if not is_reserved_id(row[0])]
        entries = [(settings.MQTT_USERNAME, mosquitto_hash(settings.MQTT_PASSWORD))]
        entries += [(device_id, hashed) for device_id, _, hashed in devices]
        write_private(settings.MQTT_PASSWORD_FILE, render_password_file(entries))
        acl = render_acl(
            settings.MQTT_USERNAME, [(device_id, kind) for device_id, kind, _ in devices]
        )
        write_private(settings.MQTT_ACL_FILE, acl)
        without = Device.objects.filter(mqtt_password_hash="").count()
        self.stdout.write(
            f"Wrote {settings.MQTT_PASSWORD_FILE} ({len(devices)} devices and the application "
            f"account) and {settings.MQTT_ACL_FILE}."
        )
        if reserved:
            self.stderr.write(
                f"Left out {', '.join(reserved)}: {RESERVED_ID_RULE}. Register the device "
                "under another id."
            )
        if without:
            self.stdout.write(
                f"{without} devices have no MQTT password yet and cannot log in: "
                "manage.py device_password --id DEVICE"
            )
        if not options["no_reload"]:
            self._reload(options["reload_pid_file"])

    def _reload(self, pid_file: Path | None) -> None:
        if pid_file is not None:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGHUP)
            except (OSError, ValueError) as exc:
                raise CommandError(f"could not signal the broker from {pid_file}: {exc}") from None
            self.stdout.write(f"Broker (pid {pid}) reloaded.")
            return
        systemctl = shutil.which("systemctl")
        if systemctl and Path("/run/systemd/system").is_dir():
            subprocess.run([systemctl, "reload", "mosquitto"], check=True)
            self.stdout.write("Broker reloaded (systemctl reload mosquitto).")
            return
        self.stdout.write(
            "Reload the broker to apply: systemctl reload mosquitto, or send it SIGHUP."
        )
