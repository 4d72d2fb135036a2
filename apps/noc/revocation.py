"""Closing a user's NOC WebSockets as soon as their access may have changed.

Every NOC connection is in its user's group (`user_group`, through its process's feed of it,
apps/noc/feeds.py). When the user logs out, is deactivated or deleted, changes password, moves
to another tenant, stops being a superuser, or loses a permission or a group (or a group of
theirs loses a permission or is deleted), the
change sends that group an `access.revoked` message once it is committed, and each of the
user's connections closes with 4410: a client reconnects and is checked afresh. Additions never
close anything. A password change also blacklists the user's refresh tokens.

A message that cannot be sent (Redis down) or that a change bypasses (`QuerySet.update`, raw
SQL, a session deleted by hand) is caught by each connection's own re-check every
NOC_REAUTH_SECONDS (apps/noc/consumers.py). The receivers are connected by NocConfig.ready(),
so they run in every process that changes users: Daphne (admin, logout), workers, `manage.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import Group, Permission
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from apps.noc.auth import blacklist_refresh_tokens
from apps.tenants.models import User

log = structlog.get_logger(__name__)

REVOKED = "access.revoked"  # the message type; NocDashboardConsumer.access_revoked handles it
# A change of one of these fields to one of these values (None: any change) revokes access.
WATCHED_FIELDS: dict[str, tuple[str, object]] = {
    "is_active": ("deactivated", False),
    "is_superuser": ("no longer a superuser", False),
    "tenant_id": ("moved to another tenant", None),
    "password": ("password changed", None),
}
WATCHED_UPDATES = {*WATCHED_FIELDS, "tenant"}  # save(update_fields=...) may name the field


def user_group(user_id: int) -> str:
    """The channel-layer group of one user's NOC connections, from the user's id only."""
    return f"noc.user.{int(user_id)}"


def revoke(user_ids: Iterable[int], reason: str) -> None:
    """Close the NOC connections of these users once the current transaction commits."""
    ids = sorted(set(user_ids))
    if ids:
        transaction.on_commit(lambda: _send(ids, reason))


def _send(user_ids: list[int], reason: str) -> None:
    try:
        async_to_sync(_send_all)(user_ids, reason)
    except Exception as exc:  # the connections' periodic re-check closes them instead
        log.warning(
            "NOC access revocation not sent; connections re-check within NOC_REAUTH_SECONDS",
            users=user_ids,
            reason=reason,
            error=f"{type(exc).__name__}: {exc}",
        )
    else:
        log.info("NOC access revoked", users=user_ids, reason=reason)


async def _send_all(user_ids: list[int], reason: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("CHANNEL_LAYERS is not configured")
    for user_id in user_ids:
        await layer.group_send(user_group(user_id), {"type": REVOKED, "reason": reason})


# --- What revokes access ----------------------------------------------------------------------


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        revoke([user.pk], "logged out")


@receiver(pre_save, sender=User)
def _note_revoking_changes(sender: Any, instance: User, raw: bool, **kwargs: Any) -> None:
    """Compare with the stored row; post_save revokes, so a reconnect sees the change."""
    instance._noc_revoking_changes = []  # type: ignore[attr-defined]
    update_fields = kwargs.get("update_fields")
    if raw or instance.pk is None or (update_fields and not WATCHED_UPDATES & update_fields):
        return  # e.g. last_login, saved alone on every login
    stored = User.objects.filter(pk=instance.pk).values(*WATCHED_FIELDS).first()
    if stored is None:
        return
    instance._noc_revoking_changes = [  # type: ignore[attr-defined]
        field
        for field, (_, revoking_value) in WATCHED_FIELDS.items()
        if getattr(instance, field) != stored[field]
        and (revoking_value is None or getattr(instance, field) == revoking_value)
    ]


@receiver(post_save, sender=User)
def _revoke_after_changes(sender: Any, instance: User, **kwargs: Any) -> None:
    changed: list[str] = getattr(instance, "_noc_revoking_changes", [])
    if changed:
        revoke([instance.pk], ", ".join(WATCHED_FIELDS[field][0] for field in changed))
    if "password" in changed:  # a new password ends the API's sessions as it ends the browser's
        blacklist_refresh_tokens(instance)


@receiver(post_delete, sender=User)
def _deleted(sender: Any, instance: User, **kwargs: Any) -> None:
    revoke([instance.pk], "deleted")


@receiver(m2m_changed, sender=User.user_permissions.through)
@receiver(m2m_changed, sender=User.groups.through)
def _lost_permission_or_group(
    sender: Any,
    instance: User | Permission | Group,
    action: str,
    reverse: bool,
    pk_set: set[int] | None,
    **kwargs: Any,
) -> None:
    """user.user_permissions / user.groups lost a member, or a permission / group lost users."""
    if action == "post_remove":
        users = (pk_set or set()) if reverse else {instance.pk}
    elif action == "pre_clear":  # m2m changes run in a transaction: sent after the clear
        users = (
            set(instance.user_set.values_list("pk", flat=True))  # type: ignore[union-attr]
            if reverse
            else {instance.pk}
        )
    else:
        return
    revoke(users, "permissions or groups removed")


@receiver(m2m_changed, sender=Group.permissions.through)
def _group_lost_permission(
    sender: Any,
    instance: Group | Permission,
    action: str,
    reverse: bool,
    pk_set: set[int] | None,
    **kwargs: Any,
) -> None:
    """group.permissions lost a permission, or permission.group_set lost groups."""
    if action not in {"post_remove", "pre_clear"}:
        return
    if not reverse:
        members = User.objects.filter(groups=instance.pk)
    elif action == "post_remove":
        members = User.objects.filter(groups__in=pk_set or ())
    else:
        members = User.objects.filter(groups__permissions=instance.pk)
    revoke(members.values_list("pk", flat=True), "a group's permissions removed")


@receiver(pre_delete, sender=Group)
def _group_deleted(sender: Any, instance: Group, **kwargs: Any) -> None:
    revoke(instance.user_set.values_list("pk", flat=True), "a group of theirs deleted")
