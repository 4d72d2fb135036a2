"""Which rules an alert event matches: the one hook on the hot path, and its cache.

`on_events_recorded` runs inside every transaction that records NOC events
(core.events.events_recorded). A batch with no newly raised or escalated alert costs nothing;
one with some costs one cached lookup (a Redis GET of the rules' generation) unless a rule
matches, and then one task is queued after commit (`dispatch_notifications`, external_api).

Each process keeps every enabled rule in memory, reloaded (one query) when the generation in
Redis changes (any save or delete of a rule sets a new random one after its commit: a Redis
emptied meanwhile cannot bring an old value back), or after a minute.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import current_app
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from apps.core.events import Event, EventType, events_recorded
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import DISPATCH_NOTIFICATIONS
from apps.notifications.models import NotificationRule

log = structlog.get_logger(__name__)

GENERATION_KEY = "notification_rules:generation"  # Redis DB 0
ALERT_EVENTS = frozenset({EventType.CRITICAL_ALERT, EventType.ALERT_UPDATED})
# Whatever the generation says, a process reloads the rules this often (a bump lost while Redis
# was down is caught up).
MAX_AGE_SECONDS = 60.0


@dataclass(frozen=True)
class RuleFilter:
    """What a rule matches; an empty set matches anything."""

    rule_id: int
    severities: frozenset[str]
    alert_types: frozenset[str]
    sites: frozenset[str]

    @classmethod
    def of(cls, rule: NotificationRule) -> RuleFilter:
        return cls(
            rule.pk, frozenset(rule.severities), frozenset(rule.alert_types), frozenset(rule.sites)
        )

    def matches(self, alert: dict[str, Any]) -> bool:
        return (
            (not self.severities or alert.get("severity") in self.severities)
            and (not self.alert_types or alert.get("alert_type") in self.alert_types)
            and (not self.sites or alert.get("site") in self.sites)
        )


class _RuleCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation: str | None = None
        self.loaded_at = 0.0
        self.by_tenant: dict[int, tuple[RuleFilter, ...]] = {}

    def rules(self) -> dict[int, tuple[RuleFilter, ...]]:
        try:
            generation: str | None = state_redis().get(GENERATION_KEY) or "0"
        except redis.RedisError:
            generation = None
        with self.lock:
            fresh = time.monotonic() - self.loaded_at < MAX_AGE_SECONDS
            if fresh and generation in {None, self.generation}:
                return self.by_tenant
            by_tenant: dict[int, list[RuleFilter]] = {}
            for rule in NotificationRule.objects.filter(enabled=True).order_by("pk"):
                by_tenant.setdefault(rule.tenant_id, []).append(RuleFilter.of(rule))
            self.by_tenant = {tenant: tuple(rules) for tenant, rules in by_tenant.items()}
            self.generation, self.loaded_at = generation, time.monotonic()
            return self.by_tenant


RULES = _RuleCache()


def raised_alerts(events: Sequence[Event]) -> list[Event]:
    """The events of alerts just raised or whose severity rose (alerts.services sets `raised`)."""
    return [e for e in events if e.message_type in ALERT_EVENTS and e.data.get("raised")]


def matches(events: Sequence[Event]) -> list[dict[str, Any]]:
    """One entry per (raised alert, rule it matches): what `dispatch_notifications` takes."""
    raised = raised_alerts(events)
    if not raised:
        return []
    by_tenant = RULES.rules()
    return [
        {"tenant_id": event.tenant_id, "rule_id": rule.rule_id, "alert": event.data}
        for event in raised
        for rule in by_tenant.get(event.tenant_id, ())
        if rule.matches(event.data)
    ]


@receiver(events_recorded)
def on_events_recorded(sender: object, events: Sequence[Event], **kwargs: Any) -> None:
    found = matches(events)
    if found:
        transaction.on_commit(lambda: _dispatch(found))


def _dispatch(found: list[dict[str, Any]]) -> None:
    try:
        current_app.send_task(
            DISPATCH_NOTIFICATIONS,
            args=[found],
            retry=False,
            argsrepr=f"[<{len(found)} notifications>]",
            kwargsrepr="{}",
        )
    except Exception as exc:  # the alerts are committed; their notifications are lost
        log.error(
            "could not queue notifications of alerts",
            notifications=len(found),
            alert_ids=sorted({entry["alert"]["id"] for entry in found}),
            error=f"{type(exc).__name__}: {exc}",
            hint="check Redis (REDIS_URL); the alerts themselves are stored and on the NOC",
        )


@receiver(post_save, sender=NotificationRule)
@receiver(post_delete, sender=NotificationRule)
def rules_changed(sender: object, **kwargs: Any) -> None:
    transaction.on_commit(_bump_generation)


def _bump_generation() -> None:
    try:
        state_redis().set(GENERATION_KEY, uuid.uuid4().hex)
    except redis.RedisError as exc:
        log.warning(
            "notification rules changed but processes could not be told",
            error=f"{type(exc).__name__}: {exc}",
            hint=f"each process reloads them within {MAX_AGE_SECONDS:.0f} s anyway",
        )
