"""The notification tasks, all on the external_api queue.

`dispatch_notifications` (queued after an alert batch commits, rules.py) applies storm control
and queues one `deliver_notification` per recipient, so a slow receiver holds up only its own
deliveries. `deliver_notification` makes one attempt, records it, and retries with backoff
while attempts remain. Beat's `flush_notification_digests` sends the digests of windows that
have ended (storm.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from celery import Task, current_app, shared_task
from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone

from apps.core import metrics
from apps.core.backoff import backoff_delay
from apps.core.circuit_breaker import SMTP, CircuitBreaker, CircuitOpenError
from apps.core.logging import mask_url
from apps.core.tasks.base import retry_later
from apps.core.tasks.celery_settings import (
    DELIVER_NOTIFICATION,
    DISPATCH_NOTIFICATIONS,
    FLUSH_NOTIFICATION_DIGESTS,
)
from apps.notifications import storm, webhooks
from apps.notifications.models import Channel, Kind, NotificationAttempt, NotificationRule, Outcome

log = structlog.get_logger(__name__)

SMTP_BREAKER = SMTP
DELIVERY_NAMESPACE = uuid.UUID(
    "5d0c3f4e-8a43-4c41-9f0e-6a1d2b7c9e10"
)  # e-mail's one endpoint is the SMTP server (EMAIL_HOST)


class DeliveryFailed(Exception):
    pass


@dataclass(frozen=True)
class Delivery:
    """One notification to one recipient; its id is the same on each of its attempts."""

    tenant_id: int
    rule_id: int
    # The e-mail address; empty for a webhook, whose URL is read from the rule as it is sent: a
    # task message or digest entry in Redis never holds a URL (its path or query may be a token).
    address: str
    kind: str
    payload: dict[str, Any]
    alert_id: int | None = None
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def body(self) -> bytes:
        event = "alert.raised" if self.kind == Kind.ALERT else "alert.digest"
        document = {
            "delivery_id": self.delivery_id,
            "event": event,
            "tenant_id": self.tenant_id,
            "rule_id": self.rule_id,
            "sent_at": timezone.now().isoformat(),
            **self.payload,
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _queue(delivery: Delivery) -> None:
    current_app.send_task(
        DELIVER_NOTIFICATION,
        args=[asdict(delivery)],
        argsrepr=f"[<{delivery.kind} {delivery.delivery_id}>]",
        kwargsrepr="{}",
    )


@shared_task(name=DISPATCH_NOTIFICATIONS, acks_late=True)
def dispatch_notifications(found: list[dict[str, Any]]) -> dict[str, int]:
    """Each (alert, rule) found by rules.matches: a delivery per recipient, or a fold into the
    recipient's digest past its window's limit. One Redis round trip per recipient."""
    rules = NotificationRule.objects.in_bulk({entry["rule_id"] for entry in found})
    per_recipient: dict[str, list[Delivery]] = defaultdict(list)
    for entry in found:
        rule = rules.get(entry["rule_id"])
        if rule is None or not rule.enabled or rule.tenant_id != entry["tenant_id"]:
            continue  # deleted or disabled since the alert matched it
        for recipient in rule.recipients():
            key = storm.recipient_key(rule.tenant_id, rule.channel, recipient)
            alert = entry["alert"]
            # The same id if this dispatch runs again (a worker lost mid-task): receivers that
            # refuse a delivery id seen before refuse the duplicate.
            once = f"{alert['id']}/{alert['severity']}/{rule.pk}/{recipient}"
            per_recipient[key].append(
                Delivery(
                    rule.tenant_id,
                    rule.pk,
                    recipient if rule.channel == Channel.EMAIL else "",
                    Kind.ALERT,
                    {"alert": alert},
                    alert_id=alert["id"],
                    delivery_id=str(uuid.uuid5(DELIVERY_NAMESPACE, once)),
                )
            )
    sent = folded = 0
    attempts: list[NotificationAttempt] = []
    for key, deliveries in per_recipient.items():
        admitted = storm.admit(key, len(deliveries))
        for delivery in deliveries[:admitted]:
            _queue(delivery)
        rest = deliveries[admitted:]
        storm.fold(key, [asdict(delivery) for delivery in rest])
        attempts += [_attempt(d, rules[d.rule_id], 0, Outcome.FOLDED) for d in rest]
        sent, folded = sent + admitted, folded + len(rest)
    NotificationAttempt.objects.bulk_create(attempts)
    for attempt in attempts:
        metrics.NOTIFICATIONS.labels(channel=attempt.channel, outcome=attempt.outcome).inc()
    if folded:
        log.warning(
            "notifications folded into digests (storm control)",
            sent=sent,
            folded=folded,
            limit=settings.NOTIFICATION_MAX_PER_WINDOW,
            window_s=settings.NOTIFICATION_WINDOW_SECONDS,
            hint="the digests go out when each recipient's window ends",
        )
    return {"sent": sent, "folded": folded}


@shared_task(name=FLUSH_NOTIFICATION_DIGESTS, acks_late=True)
def flush_notification_digests() -> int:
    """One digest per recipient whose window has ended, of everything folded in it (beat)."""
    digests = storm.take_due_digests()
    for entries in digests.values():
        last = entries[-1]
        alerts = [entry["payload"]["alert"] for entry in entries]
        _queue(
            Delivery(
                last["tenant_id"],
                last["rule_id"],
                last["address"],
                Kind.DIGEST,
                {"alerts": alerts, "count": len(alerts)},
            )
        )
    return len(digests)


@shared_task(bind=True, name=DELIVER_NOTIFICATION, acks_late=True, max_retries=None)
def deliver_notification(self: Task[Any, Any], fields: dict[str, Any]) -> str:
    delivery = Delivery(**fields)
    number = self.request.retries + 1
    rule = NotificationRule.objects.filter(pk=delivery.rule_id, enabled=True).first()
    if rule is None:
        log.info("notification dropped: its rule was deleted or disabled", **_ids(delivery))
        return "dropped"
    started = time.monotonic()
    if rule.channel == Channel.WEBHOOK:
        outcome, status, error = _post(rule, delivery)
    else:
        outcome, status, error = _mail(delivery)
    last = number >= settings.NOTIFICATION_MAX_ATTEMPTS
    if outcome in {Outcome.FAILED, Outcome.CIRCUIT_OPEN} and last:
        outcome = Outcome.GAVE_UP
    NotificationAttempt.objects.create(
        **_attempt_fields(delivery, rule, number, outcome),
        status_code=status,
        error=mask_url(error)[:2000],
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    metrics.NOTIFICATIONS.labels(channel=rule.channel, outcome=outcome).inc()
    if outcome in {Outcome.FAILED, Outcome.CIRCUIT_OPEN}:
        delay = backoff_delay(
            number - 1,
            base=settings.NOTIFICATION_RETRY_BASE_SECONDS,
            cap=settings.NOTIFICATION_RETRY_MAX_SECONDS,
        )
        log.warning(
            "notification not delivered; retrying",
            **_ids(delivery),
            channel=rule.channel,
            endpoint=_shown_recipient(rule, delivery),
            breaker=_breaker_of(rule),
            attempt=number,
            retry_in_s=round(delay, 1),
            error=error,
        )
        retry_later(self, DeliveryFailed(error), delay)
    if outcome in {Outcome.GAVE_UP, Outcome.REJECTED}:
        log.error(
            "notification not delivered; giving up",
            **_ids(delivery),
            channel=rule.channel,
            endpoint=_shown_recipient(rule, delivery),
            breaker=_breaker_of(rule),
            attempts=number,
            status_code=status,
            error=error,
            hint="GET /api/alerts/<id>/notifications/ lists every attempt; check the receiver; "
            "redis-cli GET circuit_breaker:<breaker> shows its breaker (DEL resets it)",
        )
    return str(outcome)


def _breaker_of(rule: NotificationRule) -> str:
    return (
        webhooks.breaker_service(rule.webhook_url)
        if rule.channel == Channel.WEBHOOK
        else SMTP_BREAKER
    )


def _shown_recipient(rule: NotificationRule, delivery: Delivery) -> str:
    return (
        webhooks.endpoint(rule.webhook_url) if rule.channel == Channel.WEBHOOK else delivery.address
    )


def _post(rule: NotificationRule, delivery: Delivery) -> tuple[Outcome, int | None, str]:
    breaker = CircuitBreaker(_breaker_of(rule))
    try:
        breaker.before_call()
    except CircuitOpenError as exc:
        return Outcome.CIRCUIT_OPEN, None, str(exc)
    answer = webhooks.post(
        rule.webhook_url,
        rule.webhook_secret,
        delivery.body(),
        delivery.delivery_id,
        "alert.raised" if delivery.kind == Kind.ALERT else "alert.digest",
        settings.NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS,
    )
    if answer.endpoint_failed:
        breaker.record_failure()
        return Outcome.FAILED, answer.status, answer.error
    breaker.record_success()
    if answer.ok:
        return Outcome.DELIVERED, answer.status, ""
    return Outcome.REJECTED, answer.status, answer.error


def _mail(delivery: Delivery) -> tuple[Outcome, int | None, str]:
    subject, text = _mail_text(delivery)
    message = EmailMessage(subject, text, to=[delivery.address])
    message.extra_headers = {webhooks.DELIVERY_HEADER: delivery.delivery_id}
    try:
        CircuitBreaker(SMTP_BREAKER).call(lambda: message.send(fail_silently=False))
    except CircuitOpenError as exc:
        return Outcome.CIRCUIT_OPEN, None, str(exc)
    except Exception as exc:  # smtplib's and the socket's errors alike
        return Outcome.FAILED, None, f"{type(exc).__name__}: {exc}"[:500]
    return Outcome.DELIVERED, None, ""


def _mail_text(delivery: Delivery) -> tuple[str, str]:
    if delivery.kind == Kind.DIGEST:
        alerts = delivery.payload["alerts"]
        lines = [_alert_line(alert) for alert in alerts]
        return f"[IntelliWiz] digest: {len(alerts)} more alerts", "\n".join(lines) + "\n"
    alert = delivery.payload["alert"]
    return f"[IntelliWiz] {alert['severity']} {alert['alert_type']} at {alert['source_id']}", (
        _alert_line(alert) + "\n" + (alert.get("message") or "") + "\n"
    )


def _alert_line(alert: dict[str, Any]) -> str:
    site = f" ({alert['site']})" if alert.get("site") else ""
    return (
        f"#{alert['id']} {alert['severity']} {alert['alert_type']} "
        f"from {alert['source_id']}{site} at {alert['last_seen']}"
    )


def _ids(delivery: Delivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.delivery_id,
        "kind": delivery.kind,
        "rule_id": delivery.rule_id,
        "tenant_id": delivery.tenant_id,
        "alert_id": delivery.alert_id,
    }


def _attempt_fields(
    delivery: Delivery, rule: NotificationRule, number: int, outcome: str
) -> dict[str, Any]:
    return {
        "tenant_id": delivery.tenant_id,
        "alert_id": delivery.alert_id,
        "rule_id": delivery.rule_id,
        "delivery_id": delivery.delivery_id,
        "kind": delivery.kind,
        "channel": rule.channel,
        "recipient": _shown_recipient(rule, delivery),
        "attempt": number,
        "outcome": outcome,
    }


def _attempt(
    delivery: Delivery, rule: NotificationRule, number: int, outcome: str
) -> NotificationAttempt:
    return NotificationAttempt(**_attempt_fields(delivery, rule, number, outcome))
