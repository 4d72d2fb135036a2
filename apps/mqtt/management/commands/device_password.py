from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.devices.models import Device
from apps.mqtt.credentials import new_device_password


class Command(BaseCommand):
    help = "Give a device a new MQTT password (printed once; only its hash is kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--id", required=True, dest="device_id")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            device = Device.objects.get(device_id=options["device_id"])
        except Device.DoesNotExist:
            raise CommandError(
                f"no device {options['device_id']!r}; register it with manage.py register_device"
            ) from None
        password, hashed = new_device_password()
        device.mqtt_password_hash = hashed
        device.save(update_fields=["mqtt_password_hash"])
        self.stderr.write(
            f"New MQTT password for {device.device_id} (user name {device.device_id}); it is not "
            "stored and cannot be shown again. Apply it with manage.py sync_mqtt_credentials."
        )
        self.stdout.write(password)
