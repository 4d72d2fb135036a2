from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.devices.models import Device
from apps.devices.services import register_device
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = "Register a device (its id is the one in its MQTT topics) for a tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant name")
        parser.add_argument("--id", required=True, dest="device_id", help="device id in topics")
        parser.add_argument("--kind", required=True, choices=Device.Kind.values)
        parser.add_argument("--site", default="", help="site or building")
        parser.add_argument(
            "--report-interval",
            type=int,
            metavar="SECONDS",
            help="how often it reports, if not as its kind does (DEVICE_REPORT_INTERVALS); "
            "silent for longer, it goes OFFLINE",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = Tenant.objects.get(name=options["tenant"])
        except Tenant.DoesNotExist:
            raise CommandError(
                f"no tenant named {options['tenant']!r}; create it with manage.py create_tenant "
                "or the admin"
            ) from None
        try:
            seconds = options["report_interval"]
            device, created = register_device(
                tenant,
                options["device_id"],
                options["kind"],
                site=options["site"],
                report_interval=None if seconds is None else timedelta(seconds=seconds),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not created:
            if device.tenant_id != tenant.pk:
                raise CommandError(
                    f"device {device.device_id!r} already belongs to another tenant; "
                    "device ids are unique system-wide"
                )
            self.stdout.write(f"Device {device.device_id} was already registered ({device.kind}).")
            return
        self.stdout.write(
            self.style.SUCCESS(f"Registered {device.device_id} ({device.kind}) for {tenant.name}.")
        )
