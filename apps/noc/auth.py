"""Who may watch a tenant's NOC: JWTs (REST and WebSocket alike), sessions, the NOC permissions.

Tokens are signed with HS256 only (pinned; `alg=none` and every other algorithm are refused),
carry `aud`, `iss`, `exp`, `iat`, `nbf` and the user's `tenant_id`, and are checked in full
on every use. The WebSocket takes them from the `Authorization: Bearer` header only: a token in
a URL ends up in access logs. A refresh token is good once: refreshing blacklists it and returns
a new pair, and only for a user still active and of the token's tenant.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from importlib import import_module
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_backends,
    load_backend,
)
from django.db import DatabaseError
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
# Sending and cancelling device commands: an operator's other write action, so for now the one
# who may act on alerts may also command the tenant's devices.
COMMAND_PERMISSION = ALERT_ACTION_PERMISSION
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
    claims = _required_claims(token)
    user = User.objects.select_related("tenant").filter(pk=_user_id(claims), is_active=True).first()
    return _of_token_tenant(user, claims), claims


def _required_claims(token: Token) -> dict[str, Any]:
    claims = dict(token.payload)
    missing = [claim for claim in REQUIRED_CLAIMS if claims.get(claim) is None]
    if missing:
        raise TokenRefusedError(f"token lacks {', '.join(missing)}")
    return claims


def _user_id(claims: dict[str, Any]) -> int:
    try:
        return int(claims["user_id"])
    except (KeyError, TypeError, ValueError):
        raise TokenRefusedError("token names no active user") from None


def _of_token_tenant(user: User | None, claims: dict[str, Any]) -> User:
    """`user` (the token's, if active) if still of the token's tenant."""
    if user is None:
        raise TokenRefusedError("token names no active user")
    if user.tenant_id is None or user.tenant_id != claims["tenant_id"]:
        raise TokenRefusedError("token's tenant does not match the user's")
    return user


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


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a NOC WebSocket presented: an access token, or a logged-in dashboard's session."""

    token: str | None = None
    session_key: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    user: User
    expires_at: float | None  # a token's `exp`; a session has none of its own


def admit_to_noc(
    credentials: Collection[Credentials],
) -> dict[Credentials, Admission | TokenRefusedError]:
    """What a connect with each of these credentials would be told now, all asked at once.

    The same verdicts, whether one connection connects or a Daphne process re-checks all of its
    connections: each token is verified and each session read once, then the users are read in
    one query and the NOC permission in one more (not a query per connection).
    """
    named: dict[Credentials, tuple[int, dict[str, Any] | None] | TokenRefusedError] = {}
    for presented in set(credentials):
        try:
            if presented.token is not None:
                try:
                    token = AccessToken(presented.token.encode())  # type: ignore[arg-type]
                except TokenError as exc:
                    raise TokenRefusedError(f"invalid token: {exc}") from None
                claims = _required_claims(token)
                named[presented] = (_user_id(claims), claims)
            elif presented.session_key is not None:
                named[presented] = (user_from_session(presented.session_key).pk, None)
            else:
                raise TokenRefusedError("no credentials: send Authorization: Bearer <token>")
        except TokenRefusedError as refusal:
            named[presented] = refusal
        except DatabaseError:
            raise  # the database is unreachable: no verdict for anyone (callers keep serving)
        except Exception as exc:  # one unreadable credential must not stop everyone's check
            named[presented] = TokenRefusedError(f"credentials unreadable: {type(exc).__name__}")
    user_ids = {who[0] for who in named.values() if isinstance(who, tuple)}
    users = User.objects.filter(is_active=True).in_bulk(user_ids)
    permitted = _with_noc_permission(users)
    verdicts: dict[Credentials, Admission | TokenRefusedError] = {}
    for presented, who in named.items():
        if isinstance(who, TokenRefusedError):
            verdicts[presented] = who
            continue
        user_id, token_claims = who
        try:
            active = users.get(user_id)
            if token_claims is not None:
                user = _of_token_tenant(active, token_claims)
            elif active is None:  # deactivated since the session was read
                raise TokenRefusedError("the session names no active user")
            else:
                user = active
            if user.tenant_id is None:
                raise TokenRefusedError("user belongs to no tenant")
            if user.pk not in permitted:
                raise TokenRefusedError(f"user lacks {NOC_PERMISSION}", CLOSE_FORBIDDEN)
            expires_at = None if token_claims is None else float(token_claims["exp"])
            verdicts[presented] = Admission(user, expires_at)
        except TokenRefusedError as refusal:
            verdicts[presented] = refusal
    return verdicts


def _with_noc_permission(users: dict[int, User]) -> set[int]:
    """Those of `users` whose `has_perm(NOC_PERMISSION)` is true, from each permission backend in
    one query (`with_perm`: active superusers, the user's and their groups' permissions)."""
    backends: list[Any] = [backend for backend in get_backends() if hasattr(backend, "has_perm")]
    if not all(hasattr(backend, "with_perm") for backend in backends):
        return {pk for pk, user in users.items() if user.has_perm(NOC_PERMISSION)}
    permitted: set[int] = set()
    for backend in backends:
        holders = backend.with_perm(NOC_PERMISSION).filter(pk__in=list(users))
        permitted.update(holders.values_list("pk", flat=True))
    return permitted
