"""Notifications of alerts: signed webhooks to a real receiver, breakers per endpoint, storm
control with a digest, e-mail through Django's backend, and the rules' REST API.

Deliveries run on a real external_api worker; the receivers are HTTP servers in this process.
tests/environment.py shortens the timeout (1 s), the retries and the storm window (4 s, 5
notifications).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, raise_alerts
from apps.core.circuit_breaker import OPEN, read_state
from apps.core.events import Event, EventType
from apps.core.outbox import broadcast_on_commit
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import EXTERNAL_API, FLUSH_NOTIFICATION_DIGESTS
from apps.devices.models import Device
from apps.notifications import rules, storm, webhooks
from apps.notifications.models import NotificationAttempt, NotificationRule, Outcome
from apps.tenants.models import Tenant
from tests import environment
from tests.factories import create_tenant_with_devices, operator, panic
from tests.noc.test_api import client_for
from tests.services import Service, metric, mqtt_publish, wait_for

SECRET = "receiver-shared-secret-of-at-least-32-chars"
TOLERANCE_SECONDS = 300


def verify(secret: str, header: str, body: bytes, seen: set[str], delivery_id: str) -> bool:
    """The receiver's check, as docs/notifications.md gives it."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, fields["v1"]):
        return False
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS or delivery_id in seen:
        return False
    seen.add(delivery_id)
    return True


class Receiver:
    """A webhook receiver on a free port: it verifies and keeps what it gets, and answers
    `status` after `delay` seconds."""

    def __init__(self, secret: str = SECRET, *, status: int = 200, delay: float = 0) -> None:
        self.secret, self.status, self.delay = secret, status, delay
        self.verified: list[dict[str, Any]] = []
        self.refused = 0
        self.hits = 0
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.hits += 1
                    delivery_id = self.headers[webhooks.DELIVERY_HEADER]
                    good = verify(
                        receiver.secret,
                        self.headers[webhooks.SIGNATURE_HEADER],
                        body,
                        receiver.seen,
                        delivery_id,
                    )
                    document = json.loads(body)
                    if good and document["delivery_id"] == delivery_id:
                        receiver.verified.append(document)
                    else:
                        receiver.refused += 1
                time.sleep(receiver.delay)
                try:
                    self.send_response(receiver.status if good else 401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts?token=abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_kind(self, event: str) -> list[dict[str, Any]]:
        with self.lock:
            return [document for document in self.verified if document["event"] == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def notifier(
    redis_client: object, start_celery_worker: Callable[[str], Service], transactional_db: None
) -> Service:
    """A real external_api worker on a clean database and Redis."""
    return start_celery_worker(EXTERNAL_API.name)


def tenant_with_devices(name: str, count: int = 1, site: str = "hq") -> Tenant:
    tenant = Tenant.objects.create(name=name)
    Device.objects.bulk_create(
        Device(tenant=tenant, device_id=f"{name}-panic-{i}", kind="panic_button", site=site)
        for i in range(count)
    )
    return tenant


def webhook_rule(tenant: Tenant, url: str, **match: Any) -> NotificationRule:
    fields = {"name": "on call", "channel": "webhook", "webhook_secret": SECRET, **match}
    return NotificationRule.objects.create(tenant=tenant, webhook_url=url, **fields)


def raise_for(tenant: Tenant, types: list[str], severity: str = Severity.CRITICAL) -> list[int]:
    """One new alert per device of the tenant and type, in one batch as a worker commits it."""
    signals = [
        AlertSignal(device, AlertType(alert_type), Severity(severity), timezone.now())
        for device in Device.objects.filter(tenant=tenant)
        for alert_type in types
    ]
    with transaction.atomic():
        events = raise_alerts(signals)
        broadcast_on_commit(events)
    return [event.data["id"] for event in events]


def redis_contents() -> str:
    """Every key and value of the bus's Redis database (queues, digests, breakers), as text."""
    client = state_redis()
    readers: dict[str, Callable[[str], Any]] = {
        "string": client.get,
        "list": lambda key: client.lrange(key, 0, -1),
        "hash": client.hgetall,
        "set": client.smembers,
        "zset": lambda key: client.zrange(key, 0, -1),
    }
    return "\n".join(
        f"{key} {readers.get(client.type(key), str)(key)}" for key in client.scan_iter()
    )


def outcomes(alert_id: int) -> list[str]:
    return list(
        NotificationAttempt.objects.filter(alert_id=alert_id).values_list("outcome", flat=True)
    )


def test_a_receiver_gets_signed_deliveries_of_matching_alerts_only(notifier, receivers):
    receiver = receivers()
    tenant = tenant_with_devices("acme", site="hq")
    webhook_rule(tenant, receiver.url, severities=["CRITICAL"], sites=["hq"])

    [critical] = raise_for(tenant, ["PANIC"])
    raise_for(tenant, ["FIRE"], severity=Severity.LOW)  # matches no rule

    [document] = wait_for(lambda: receiver.of_kind("alert.raised"), timeout=15, what="delivery")
    assert document["alert"]["id"] == critical
    assert document["alert"]["severity"] == "CRITICAL"
    assert document["tenant_id"] == tenant.pk
    assert receiver.refused == 0
    wait_for(lambda: outcomes(critical) == [Outcome.DELIVERED], timeout=10, what="the record")
    assert receiver.hits == 1

    # The tenant's operators see the attempt, without the URL's path or query.
    viewer = operator(tenant, "viewer", password=None)
    [attempt] = client_for(viewer).get(f"/api/alerts/{critical}/notifications/").json()["results"]
    assert attempt["outcome"] == "delivered"
    assert attempt["status_code"] == 200
    assert attempt["attempt"] == 1
    assert attempt["recipient"] == webhooks.endpoint(receiver.url)
    assert "token" not in json.dumps(attempt)
    stranger = operator(tenant_with_devices("other"), "stranger", password=None)
    assert client_for(stranger).get(f"/api/alerts/{critical}/notifications/").status_code == 404


def test_a_panic_published_by_a_device_reaches_the_webhook(bus, receivers):
    receiver = receivers()
    tenant = create_tenant_with_devices("acme", "panic-007")
    webhook_rule(tenant, receiver.url, alert_types=["PANIC"])

    mqtt_publish(environment.MQTT_PORT, [("alert/panic-007/panic", panic())])

    [document] = wait_for(lambda: receiver.of_kind("alert.raised"), timeout=30, what="delivery")
    assert document["alert"]["source_id"] == "panic-007"
    assert document["alert"]["alert_type"] == "PANIC"


def test_a_failing_receiver_trips_its_breaker_and_another_tenants_still_gets_its_delivery(
    notifier, receivers
):
    hanging = receivers(delay=3)  # answers after the 1 s timeout
    healthy = receivers()
    stuck = tenant_with_devices("stuck", count=3)
    webhook_rule(stuck, hanging.url)
    fine = tenant_with_devices("fine")
    webhook_rule(fine, healthy.url)

    stuck_alerts = raise_for(stuck, ["PANIC"])
    [fine_alert] = raise_for(fine, ["PANIC"])

    def all_given_up() -> bool:
        return all(Outcome.GAVE_UP in outcomes(alert) for alert in stuck_alerts)

    wait_for(lambda: healthy.of_kind("alert.raised"), timeout=10, what="the healthy delivery")
    assert not all_given_up()  # it did not wait for the hanging receiver's deliveries
    breaker = webhooks.breaker_service(hanging.url)
    wait_for(
        lambda: read_state(state_redis(), breaker).state == OPEN, timeout=20, what="breaker open"
    )
    assert "127.0.0.1" not in breaker  # the breaker's Redis key names a hash of the URL

    wait_for(all_given_up, timeout=30, what="the hanging receiver's deliveries to give up")
    attempts = NotificationAttempt.objects.filter(alert_id__in=stuck_alerts)
    assert attempts.filter(outcome=Outcome.CIRCUIT_OPEN).exists()  # refused without a call
    assert hanging.hits < attempts.count()
    assert hanging.hits <= settings.CIRCUIT_BREAKER_FAILURE_THRESHOLD + EXTERNAL_API.concurrency
    assert outcomes(fine_alert) == [Outcome.DELIVERED]
    assert read_state(state_redis(), webhooks.breaker_service(healthy.url)).state != OPEN


def test_500_alerts_to_one_recipient_make_at_most_n_messages_and_one_digest(notifier, receivers):
    receiver = receivers()
    tenant = tenant_with_devices("storm", count=100)
    rule = webhook_rule(tenant, receiver.url)
    limit = settings.NOTIFICATION_MAX_PER_WINDOW
    folded_before = metric("notifications_total", channel="webhook", outcome="folded")

    raised = [
        alert
        for alert_type in ["PANIC", "SOS", "INTRUSION", "FIRE", "MEDICAL"]
        for alert in raise_for(tenant, [alert_type])
    ]
    assert len(raised) == 500

    key = storm.recipient_key(tenant.pk, rule.channel, receiver.url)
    wait_for(
        lambda: NotificationAttempt.objects.filter(outcome=Outcome.FOLDED).count() == 500 - limit,
        timeout=20,
        what="the storm to be folded",
    )
    wait_for(
        lambda: state_redis().zrangebyscore(storm.DUE_KEY, "-inf", time.time()) == [key],
        timeout=10,
        what="the window to end",
    )
    assert "token=abc" not in redis_contents()  # the URL's token is in no key or value
    current_app.send_task(FLUSH_NOTIFICATION_DIGESTS)  # what beat does every 15 s
    [digest] = wait_for(lambda: receiver.of_kind("alert.digest"), timeout=15, what="the digest")

    singles = receiver.of_kind("alert.raised")
    assert len(singles) == limit
    assert digest["count"] == 500 - limit
    delivered = {doc["alert"]["id"] for doc in singles}
    assert delivered | {alert["id"] for alert in digest["alerts"]} == set(raised)
    assert receiver.hits == limit + 1
    folded_after = metric("notifications_total", channel="webhook", outcome="folded")
    assert folded_after - folded_before == 500 - limit


def test_an_email_rule_sends_the_alert_through_djangos_backend(notifier):
    tenant = tenant_with_devices("mailco", site="depot")
    NotificationRule.objects.create(
        tenant=tenant, name="night desk", channel="email", emails=["desk@example.com"]
    )
    [alert] = raise_for(tenant, ["FIRE"])

    wait_for(lambda: outcomes(alert) == [Outcome.DELIVERED], timeout=15, what="the e-mail")
    mail = "\n".join(path.read_text() for path in Path(settings.EMAIL_FILE_PATH).glob("*.log"))
    assert "To: desk@example.com" in mail
    assert f"#{alert} CRITICAL FIRE from mailco-panic-0 (depot)" in mail


def test_a_batch_with_no_matching_rule_costs_a_cached_lookup_and_no_query(
    redis_client, transactional_db
):
    quiet = tenant_with_devices("quiet")
    webhook_rule(tenant_with_devices("loud"), "http://127.0.0.1:9/")
    alert = {"id": 1, "severity": "CRITICAL", "alert_type": "PANIC", "site": "", "raised": True}
    event = Event(quiet.pk, EventType.CRITICAL_ALERT, alert)
    rules.matches([event])  # loads the rules once
    with CaptureQueriesContext(connection) as queries:
        assert rules.matches([event] * 100) == []
        assert rules.matches([Event(quiet.pk, EventType.TELEMETRY_UPDATE, {})]) == []
    assert len(queries) == 0


def test_rules_are_managed_by_the_tenants_admins_and_the_secret_is_shown_once(
    redis_client, transactional_db
):
    tenant = tenant_with_devices("ruled")
    plain = operator(tenant, "plain", password=None)
    admin = operator(tenant, "admin", password=None)
    admin.user_permissions.add(*Permission.objects.filter(content_type__app_label="notifications"))
    body = {
        "name": "pager",
        "channel": "webhook",
        "webhook_url": "https://user:pw@hooks.example.com/T0/secret-path",
        "severities": ["CRITICAL", "HIGH"],
    }
    assert client_for(plain).post("/api/notification-rules/", body).status_code == 403

    created = client_for(admin).post("/api/notification-rules/", body)
    assert created.status_code == 201, created.json()
    assert len(created.json()["webhook_secret"]) >= 32
    listed = client_for(plain).get("/api/notification-rules/").json()["results"]
    assert listed[0]["webhook_endpoint"] == "https://hooks.example.com"
    assert "webhook_secret" not in listed[0]
    assert "secret-path" not in json.dumps(listed)
    assert "user:pw" not in json.dumps(listed)

    bad = client_for(admin).post("/api/notification-rules/", {**body, "severities": ["LOUD"]})
    assert bad.status_code == 400
    no_address = client_for(admin).post(
        "/api/notification-rules/", {"name": "m", "channel": "email", "emails": []}
    )
    assert no_address.status_code == 400
    other = operator(tenant_with_devices("nosy"), "nosy", password=None)
    rule_id = created.json()["id"]
    assert client_for(other).get(f"/api/notification-rules/{rule_id}/").status_code == 404
