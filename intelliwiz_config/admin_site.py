"""The Django admin: it shows every tenant's data, so it is kept to few people and places.

- Served only when ADMIN_ENABLED (default: on with DJANGO_DEBUG, off in production), and only to
  clients in ADMIN_ALLOWED_NETWORKS (default loopback), by the client address every other check
  uses (apps/core/client_address.py). Anything else, the login page included, is a 404, as is a
  request relayed by a proxy that is not in TRUSTED_PROXIES (its true client is unknown).
- Only superusers may sign in or use it; staff who are not superusers are refused.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

from apps.core.client_address import client_address, in_networks, relayed_by_untrusted_proxy
from apps.tenants.models import User


class SuperuserAuthenticationForm(AdminAuthenticationForm):
    def confirm_login_allowed(self, user: User) -> None:
        super().confirm_login_allowed(user)
        if not user.is_superuser:
            raise ValidationError(
                "This account may not use the admin: it is for superusers only.",
                code="not_superuser",
            )


class SuperuserAdminSite(AdminSite):
    login_form = SuperuserAuthenticationForm

    def has_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)


@cache
def _admin_prefix() -> str:
    return reverse("admin:index")


def admin_allowed(request: HttpRequest) -> bool:
    return (
        settings.ADMIN_ENABLED
        and not relayed_by_untrusted_proxy(request)
        and in_networks(client_address(request), settings.ADMIN_ALLOWED_NETWORKS)
    )


class AdminGateMiddleware(MiddlewareMixin):
    def process_request(self, request: HttpRequest) -> None:
        prefix = _admin_prefix()
        path = request.path_info
        if (path == prefix.rstrip("/") or path.startswith(prefix)) and not admin_allowed(request):
            raise Http404
