"""Tenants and their users. Everything a tenant owns points at a Tenant row."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class Tenant(models.Model):
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """An operator, who sees only their tenant's data. Only superusers may use the Django admin,
    which is not scoped to a tenant: it is off in production and local by default (README, Admin).
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="users"
    )

    def __str__(self) -> str:
        return f"{self.username} ({self.tenant or 'no tenant'})"
