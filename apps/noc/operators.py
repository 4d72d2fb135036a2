"""Operator accounts: the permissions an operator needs, and the demo operator of `make run`."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.contrib.auth.models import Permission
from django.db import transaction

from apps.noc.auth import ALERT_ACTION_PERMISSION, NOC_PERMISSION
from apps.tenants.models import Tenant, User


def grant_operator_permissions(user: User) -> None:
    """What an operator needs: watch the NOC and act on alerts."""
    codenames = [perm.split(".", 1)[1] for perm in (NOC_PERMISSION, ALERT_ACTION_PERMISSION)]
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="alerts", codename__in=codenames)
    )


@transaction.atomic
def ensure_demo_operator(tenant_name: str, username: str, password_file: Path) -> tuple[User, str]:
    """The demo tenant and its operator; the password is generated once and kept in a file."""
    tenant, _ = Tenant.objects.get_or_create(name=tenant_name)
    user, created = User.objects.get_or_create(
        # Not staff: the Django admin is for superusers and is not scoped to one tenant.
        username=username,
        defaults={"tenant": tenant},
    )
    grant_operator_permissions(user)
    if created or not password_file.exists():
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save()
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    return user, password_file.read_text().strip()
