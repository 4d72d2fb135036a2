"""Tenant and operator set-up shared by the management commands and `make run`."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.db import transaction

from apps.tenants.models import Tenant, User


@transaction.atomic
def ensure_demo_operator(tenant_name: str, username: str, password_file: Path) -> tuple[User, str]:
    """The demo tenant and its operator; the password is generated once and kept in a file."""
    tenant, _ = Tenant.objects.get_or_create(name=tenant_name)
    user, created = User.objects.get_or_create(
        # Not staff: the Django admin is for superusers and is not scoped to one tenant.
        username=username,
        defaults={"tenant": tenant},
    )
    from apps.noc.auth import grant_operator_permissions

    grant_operator_permissions(user)
    if created or not password_file.exists():
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save()
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    return user, password_file.read_text().strip()
