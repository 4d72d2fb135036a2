"""Who may watch a tenant's NOC: JWTs (REST and WebSocket alike) and the NOC permissions.

Tokens are signed with HS256 only (pinned; `alg=none` and every other algorithm are refused),
carry `aud`, `iss`, `exp`, `iat`, `nbf` and the user's `tenant_id`, and are checked in full
on every use. The WebSocket takes them from the `Authorization: Bearer` header only: a token in
a URL ends up in access logs.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, Token

from apps.tenants.models import User

NOC_PERMISSION = "alerts.view_noc_dashboard"
ALERT_ACTION_PERMISSION = "alerts.change_alert"
REQUIRED_CLAIMS = ("exp", "iat", "nbf", "aud", "iss", "tenant_id")

# WebSocket close codes: 4401 "who are you?", 4403 "not for you".
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class TokenRefusedError(Exception):
    def __init__(self, reason: str, close_code: int = CLOSE_UNAUTHENTICATED) -> None:
        super().__init__(reason)
        self.close_code = close_code


def _with_tenant(token: Token, user: User) -> Token:
    token["tenant_id"] = user.tenant_id
    token["nbf"] = token["iat"]
    return token


class TenantTokenObtainPairSerializer(TokenObtainPairSerializer):
    """`/api/token/`: the pair carries the user's tenant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No longer than a username can be: a longer one is a 400, not a failed login to record
        # (django-axes keeps at most 255 characters of it).
        self.fields[self.username_field] = serializers.CharField(
            write_only=True, max_length=User._meta.get_field("username").max_length
        )

    @classmethod
    def get_token(cls, user: Any) -> Token:
        return _with_tenant(super().get_token(user), user)


def issue_refresh_token(user: User) -> RefreshToken:
    token = _with_tenant(RefreshToken.for_user(user), user)
    assert isinstance(token, RefreshToken)
    return token


def issue_access_token(user: User) -> str:
    return str(issue_refresh_token(user).access_token)


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None for anything else."""
    kind, _, token = authorization.partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


def user_from_token(raw: str) -> tuple[User, dict[str, Any]]:
    """The active user a valid access token names, with its claims; else TokenRefusedError."""
    try:
        token = AccessToken(raw.encode())  # type: ignore[arg-type]
    except TokenError as exc:
        raise TokenRefusedError(f"invalid token: {exc}") from None
    claims = dict(token.payload)
    missing = [claim for claim in REQUIRED_CLAIMS if claims.get(claim) is None]
    if missing:
        raise TokenRefusedError(f"token lacks {', '.join(missing)}")
    try:
        user = User.objects.select_related("tenant").get(pk=claims["user_id"], is_active=True)
    except (User.DoesNotExist, KeyError, ValueError):
        raise TokenRefusedError("token names no active user") from None
    if user.tenant_id is None or user.tenant_id != claims["tenant_id"]:
        raise TokenRefusedError("token's tenant does not match the user's")
    return user, claims


def require_noc_access(user: User) -> None:
    if user.tenant_id is None:
        raise TokenRefusedError("user belongs to no tenant")
    if not user.has_perm(NOC_PERMISSION):
        raise TokenRefusedError(f"user lacks {NOC_PERMISSION}", CLOSE_FORBIDDEN)
