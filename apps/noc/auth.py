"""Who may watch a tenant's NOC: JWTs (REST and WebSocket alike), sessions, the NOC permissions.

Tokens are signed with HS256 only (pinned; `alg=none` and every other algorithm are refused),
carry `aud`, `iss`, `exp`, `iat`, `nbf` and the user's `tenant_id`, and are checked in full
on every use. The WebSocket takes them from the `Authorization: Bearer` header only: a token in
a URL ends up in access logs. A refresh token is good once: refreshing blacklists it and returns
a new pair, and only for a user still active and of the token's tenant.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, Token

from apps.tenants.models import User

NOC_PERMISSION = "alerts.view_noc_dashboard"
ALERT_ACTION_PERMISSION = "alerts.change_alert"
REQUIRED_CLAIMS = ("exp", "iat", "nbf", "aud", "iss", "tenant_id")

# WebSocket close codes: 4401 "who are you?", 4403 "not for you", 4410 "your access changed
# (logout, deactivation, password, tenant or permissions): reconnect to be checked again".
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_REVOKED = 4410


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


class TenantTokenRefreshSerializer(TokenRefreshSerializer):
    """`/api/token/refresh/`: a new pair; the refresh token sent is then no longer valid."""

    # The token is blacklisted as it is used (ROTATE_REFRESH_TOKENS, BLACKLIST_AFTER_ROTATION):
    # of two requests racing with one token only the first gets a pair. The user must still be
    # active and of the token's tenant, as for an access token.
    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])  # signature, claims, type, not blacklisted
        try:
            user, _ = _checked_user(refresh)
        except TokenRefusedError as refusal:
            raise AuthenticationFailed(str(refusal), "no_active_account") from None
        # blacklist() returns get_or_create's (row, created), though annotated as the row.
        _, first_use = cast("tuple[Any, bool]", refresh.blacklist())
        if not first_use:
            raise TokenError("Token is blacklisted")
        pair = issue_refresh_token(user)
        return {"access": str(pair.access_token), "refresh": str(pair)}


def issue_refresh_token(user: User) -> RefreshToken:
    token = _with_tenant(RefreshToken.for_user(user), user)
    assert isinstance(token, RefreshToken)
    return token


def blacklist_refresh_tokens(user: User) -> None:
    """Refuse from now on every refresh token the user holds (a new password was set)."""
    held = OutstandingToken.objects.filter(
        user=user, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True
    )
    BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token=token) for token in held], ignore_conflicts=True
    )


def issue_access_token(user: User) -> str:
    return str(_with_tenant(AccessToken.for_user(user), user))


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
    return _checked_user(token)


def _checked_user(token: Token) -> tuple[User, dict[str, Any]]:
    """The active user a verified token names, if still of the token's tenant; with its claims."""
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


def user_from_session(session_key: str) -> User:
    """The active user a session still names, as Django checks it on every request.

    A fresh read: the session must still exist (not logged out, flushed or expired), its user be
    active, and its password hash match the user's (a password change ends other sessions).
    Unlike `django.contrib.auth.get_user`, it never changes the session.
    """
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user_id, backend_path = session.get(SESSION_KEY), session.get(BACKEND_SESSION_KEY)
    if user_id is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        raise TokenRefusedError("the session has ended: log in again")
    user = load_backend(backend_path).get_user(user_id)
    if not isinstance(user, User):  # the backend's get_user refuses an inactive user
        raise TokenRefusedError("the session names no active user")
    session_hash = session.get(HASH_SESSION_KEY) or ""
    valid_hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not any(constant_time_compare(session_hash, valid) for valid in valid_hashes):
        raise TokenRefusedError("the password changed since this session logged in")
    return user


def require_noc_access(user: User) -> None:
    if user.tenant_id is None:
        raise TokenRefusedError("user belongs to no tenant")
    if not user.has_perm(NOC_PERMISSION):
        raise TokenRefusedError(f"user lacks {NOC_PERMISSION}", CLOSE_FORBIDDEN)
