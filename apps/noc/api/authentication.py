"""REST authentication: a JWT is checked exactly as the NOC WebSocket checks it.

simplejwt's stock `JWTAuthentication` verifies signature and expiry but not the tenant, `nbf`
or the required claims; `auth.user_from_token` does, for both doors.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from apps.noc.auth import TokenRefusedError, bearer_token, user_from_token
from apps.tenants.models import User


class TenantJWTAuthentication(BaseAuthentication):
    """`Authorization: Bearer <access token>`; a refused token is a 401 that says why."""

    def authenticate(self, request: Request) -> tuple[User, dict[str, Any]] | None:
        raw = bearer_token(get_authorization_header(request).decode("latin-1"))
        if raw is None:
            return None  # not ours: the session (or nobody) then
        try:
            return user_from_token(raw)
        except TokenRefusedError as refusal:
            raise AuthenticationFailed(str(refusal)) from None

    def authenticate_header(self, request: Request) -> str:
        # Present, so an unauthenticated request is a 401 (with this challenge), not a 403.
        return 'Bearer realm="api"'
