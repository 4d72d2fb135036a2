"""manage.py create_operator --tenant NAME --username U [--password-env VAR]

The password comes from the environment variable the operator names (for scripts), else from a
prompt; it is never a command-line argument, which `ps` and shell history would show.
"""

import os
import sys
from getpass import getpass
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.noc.operators import grant_operator_permissions
from apps.tenants.models import Tenant, User


class Command(BaseCommand):
    help = "Create a tenant's NOC operator (or reset an existing one's password and permissions)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant name")
        parser.add_argument("--username", required=True)
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="read the password from this environment variable instead of prompting",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = Tenant.objects.get(name=options["tenant"])
        except Tenant.DoesNotExist:
            raise CommandError(
                f"no tenant named {options['tenant']!r}; "
                f"create it first with manage.py create_tenant {options['tenant']!r}"
            ) from None
        username = options["username"]
        existing = User.objects.filter(username=username).first()
        if existing is not None and existing.tenant_id != tenant.pk:
            raise CommandError(
                f"user {username!r} exists and belongs to {existing.tenant or 'no tenant'}; "
                "choose another username"
            )
        password = self._password(options["password_env"])
        user = existing or User(username=username, tenant=tenant)
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise CommandError("password refused: " + " ".join(exc.messages)) from None
        with transaction.atomic():
            user.set_password(password)
            user.save()
            grant_operator_permissions(user)
        verb = "Updated" if existing else "Created"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} operator {username} of {tenant.name} (NOC and alert actions)."
            )
        )

    def _password(self, variable: str | None) -> str:
        if variable:
            # Named by the operator on the command line, so settings.py cannot read it.
            password = os.environ.get(variable, "")
            if not password:
                raise CommandError(f"environment variable {variable} is not set or is empty")
            return password
        if not sys.stdin.isatty():
            raise CommandError(
                "stdin is not a terminal, so the password cannot be prompted for; "
                "put it in an environment variable and pass --password-env VAR"
            )
        password = getpass("Password: ")
        if not password:
            raise CommandError("the password must not be empty")
        if getpass("Password (again): ") != password:
            raise CommandError("the passwords do not match; run the command again")
        return password
