"""manage.py issue_token --user U: a short-lived access token, for operators' scripts.

Only the token goes to stdout, so `TOKEN=$(manage.py issue_token --user U)` works.
"""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.noc.auth import NOC_PERMISSION, issue_access_token
from apps.tenants.models import User


class Command(BaseCommand):
    help = "Print a short-lived API / WebSocket access token for a tenant's user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = User.objects.get(username=options["user"])
        except User.DoesNotExist:
            raise CommandError(
                f"no user {options['user']!r}; create one with manage.py create_operator"
            ) from None
        if not user.is_active:
            raise CommandError(f"user {user.username!r} is inactive; reactivate it in the admin")
        if user.tenant_id is None:
            raise CommandError(
                f"user {user.username!r} belongs to no tenant, and tokens are for a tenant's "
                "data; use an operator made by manage.py create_operator, or set a tenant in "
                "the admin"
            )
        if not user.has_perm(NOC_PERMISSION):
            self.stderr.write(
                f"warning: {user.username} lacks {NOC_PERMISSION}; the API will answer 403 "
                "(manage.py create_operator grants it)"
            )
        self.stdout.write(issue_access_token(user))
        self.stderr.write(f"valid for {settings.JWT_ACCESS_MINUTES} minutes")
