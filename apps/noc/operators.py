"""Operator accounts: the permissions an operator needs, and the demo operator of `make run`."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.contrib.auth.hashers import make_password
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
    password = secrets.token_urlsafe(12)
    user, created = User.objects.get_or_create(
        # Not staff: the Django admin is for superusers and is not scoped to one tenant.
        username=username,
        # Set as the row is created: a first `make run` changes no password, so it revokes
        # nothing (it would try to reach Redis before the stack has started it).
        defaults={"tenant": tenant, "password": make_password(password)},
    )
    grant_operator_permissions(user)
    if created or not password_file.exists():
        if not created:  # the file was deleted: a new password, which closes old sessions
            user.set_password(password)
            user.save(update_fields=["password"])
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    return user, password_file.read_text().strip()
