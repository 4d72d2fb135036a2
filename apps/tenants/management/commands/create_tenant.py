from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = "Create a tenant (does nothing if one of that name exists)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the tenant's name, unique")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        max_length = Tenant._meta.get_field("name").max_length
        if not name or (max_length and len(name) > max_length):
            raise CommandError(f"a tenant name needs 1 to {max_length} characters")
        tenant, created = Tenant.objects.get_or_create(name=name)
        if not created:
            self.stdout.write(f"Tenant {tenant.name} already exists; nothing to do.")
            return
        self.stdout.write(self.style.SUCCESS(f"Created tenant {tenant.name}."))
