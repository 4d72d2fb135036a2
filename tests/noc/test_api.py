"""/api/: tokens, tenant isolation, permissions, alert actions, lists, readings and the schema."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.db.models import Model
from django.utils import timezone
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from apps.alerts.models import Alert, AlertStatus
from apps.alerts.services import AlertSignal, raise_alert
from apps.core.events import tenant_group
from apps.devices.models import Device, GuardLocation, SensorReading, TelemetryReading
from apps.devices.services import register_device
from apps.noc.auth import issue_access_token
from apps.tenants.models import Tenant, User
from tests.factories import OPERATOR_PASSWORD, operator

# Token requests are throttled through the cache, which is the real Redis.
pytestmark = pytest.mark.usefixtures("redis_server")

NOW = timezone.now()
FORM = "application/x-www-form-urlencoded"


def make_tenant(name: str) -> Tenant:
    """A tenant with a panic button at its HQ and a smoke detector in its warehouse."""
    tenant = Tenant.objects.create(name=name)
    register_device(tenant, f"{name}-panic", Device.Kind.PANIC_BUTTON, site=f"{name}-hq")
    register_device(tenant, f"{name}-smoke", Device.Kind.SMOKE, site=f"{name}-warehouse")
    return tenant


def make_alert(
    device_id: str, alert_type: str = "PANIC", severity: str = "CRITICAL", minutes_ago: int = 0
) -> Alert:
    signal = AlertSignal(
        device=Device.objects.get(device_id=device_id),
        alert_type=alert_type,
        severity=severity,
        seen_at=NOW - timedelta(minutes=minutes_ago),
    )
    return Alert.objects.get(pk=raise_alert(signal).data["id"])


def make_reading(model: type[Model], device_id: str, minutes_ago: int, **fields: Any) -> Any:
    device = Device.objects.get(device_id=device_id)
    at = NOW - timedelta(minutes=minutes_ago)
    return model._default_manager.create(
        tenant_id=device.tenant_id,
        device=device,
        idempotency_key=uuid.uuid4().hex,
        recorded_at=at,
        received_at=at,
        **fields,
    )


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_access_token(user)}")
    return client


def ids(response: Any, key: str = "id") -> list[Any]:
    assert response.status_code == 200, response.content
    return [row[key] for row in response.json()["results"]]


@pytest.fixture
def acme() -> Tenant:
    return make_tenant("acme")


@pytest.fixture
def globex() -> Tenant:
    return make_tenant("globex")


@pytest.fixture
def acme_client(acme: Tenant) -> APIClient:
    return client_for(operator(acme, "acme-op"))


# --- Tokens ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_pair_from_the_api_carries_the_tenant_opens_the_api_and_refreshes(acme: Tenant):
    make_alert("acme-panic")
    operator(acme, "acme-op")
    client = APIClient()

    pair = client.post(
        "/api/token/", {"username": "acme-op", "password": OPERATOR_PASSWORD}, format="json"
    )
    assert pair.status_code == 200, pair.content
    assert AccessToken(pair.json()["access"])["tenant_id"] == acme.pk  # type: ignore[arg-type]

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {pair.json()['access']}")
    assert len(ids(client.get("/api/alerts/"))) == 1

    refreshed = client.post("/api/token/refresh/", {"refresh": pair.json()["refresh"]})
    assert refreshed.status_code == 200, refreshed.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert len(ids(client.get("/api/alerts/"))) == 1


@pytest.mark.django_db
def test_a_wrong_password_a_missing_token_and_a_forged_token_are_401(acme: Tenant):
    operator(acme, "acme-op")
    client = APIClient()
    wrong = client.post("/api/token/", {"username": "acme-op", "password": "nope"})
    assert wrong.status_code == 401
    assert client.get("/api/alerts/").status_code == 401
    forged = issue_access_token(User.objects.get(username="acme-op"))[:-4] + "AAAA"
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert client.get("/api/alerts/").status_code == 401


@pytest.mark.django_db
def test_a_token_naming_another_tenant_than_the_users_current_one_is_a_401(
    acme: Tenant, globex: Tenant
):
    user = operator(acme, "acme-op")
    client = client_for(user)
    assert client.get("/api/alerts/").status_code == 200
    user.tenant = globex  # moved after the token was issued: the token still says acme
    user.save()
    response = client.get("/api/alerts/")
    assert response.status_code == 401
    assert response.json()["detail"] == "token's tenant does not match the user's"


# --- Tenant isolation ------------------------------------------------------------------------


@pytest.mark.django_db
def test_lists_show_only_the_callers_tenant(acme: Tenant, globex: Tenant, acme_client: APIClient):
    own = make_alert("acme-panic")
    make_alert("globex-panic")
    assert ids(acme_client.get("/api/alerts/")) == [own.pk]
    assert ids(acme_client.get("/api/devices/"), "device_id") == ["acme-panic", "acme-smoke"]


@pytest.mark.django_db
def test_another_tenants_alert_and_device_are_not_found(
    acme: Tenant, globex: Tenant, acme_client: APIClient
):
    foreign = make_alert("globex-panic")
    for path in [
        f"/api/alerts/{foreign.pk}/",
        "/api/devices/globex-panic/",
        "/api/devices/globex-panic/readings/?kind=telemetry",
    ]:
        assert acme_client.get(path).status_code == 404, path
    for verb in ["acknowledge", "start", "resolve", "false_alarm"]:
        assert acme_client.post(f"/api/alerts/{foreign.pk}/{verb}/").status_code == 404, verb
    foreign.refresh_from_db()
    assert foreign.status == AlertStatus.NEW
    assert not foreign.transitions.exists()


@pytest.mark.django_db
def test_a_user_without_a_tenant_gets_no_usable_token_and_sees_nothing_by_session(acme: Tenant):
    alert = make_alert("acme-panic")
    user = operator(None, "admin-without-tenant")
    refused = client_for(user).get("/api/alerts/")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "token lacks tenant_id"
    client = APIClient()
    client.force_login(user)
    assert ids(client.get("/api/alerts/")) == []
    assert ids(client.get("/api/devices/")) == []
    assert client.get(f"/api/alerts/{alert.pk}/").status_code == 404
    assert client.get("/api/devices/acme-panic/").status_code == 404
    assert client.post(f"/api/alerts/{alert.pk}/acknowledge/").status_code == 404


# --- Permissions ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_reads_need_the_noc_permission(acme: Tenant):
    alert = make_alert("acme-panic")
    client = client_for(operator(acme, "no-perms", permissions=False))
    for path in [
        "/api/alerts/",
        f"/api/alerts/{alert.pk}/",
        "/api/devices/",
        "/api/devices/acme-panic/",
        "/api/devices/acme-panic/readings/?kind=telemetry",
    ]:
        response = client.get(path)
        assert response.status_code == 403, path
        assert "alerts.view_noc_dashboard" in response.json()["detail"]


@pytest.mark.django_db
def test_acting_on_an_alert_needs_the_alert_action_permission(acme: Tenant):
    alert = make_alert("acme-panic")
    watcher = operator(acme, "watcher", permissions=False)
    watcher.user_permissions.add(Permission.objects.get(codename="view_noc_dashboard"))
    client = client_for(watcher)
    assert client.get(f"/api/alerts/{alert.pk}/").status_code == 200
    response = client.post(f"/api/alerts/{alert.pk}/acknowledge/")
    assert response.status_code == 403
    assert "alerts.change_alert" in response.json()["detail"]
    alert.refresh_from_db()
    assert alert.status == AlertStatus.NEW


# --- Alert actions ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_action_moves_the_alert_and_records_the_operator(acme: Tenant):
    alert = make_alert("acme-panic")
    client = client_for(operator(acme, "acme-op"))
    url = f"/api/alerts/{alert.pk}"

    acknowledged = client.post(f"{url}/acknowledge/", {"note": "on it"}, format="json")
    assert acknowledged.status_code == 200, acknowledged.content
    assert acknowledged.json()["status"] == "ACKNOWLEDGED"
    assert client.post(f"{url}/start/").json()["status"] == "IN_PROGRESS"
    resolved = client.post(f"{url}/resolve/").json()
    assert resolved["status"] == "RESOLVED"
    assert resolved["resolved_at"] is not None

    steps = list(alert.transitions.values_list("to_status", "by__username", "note"))
    assert steps == [
        ("ACKNOWLEDGED", "acme-op", "on it"),
        ("IN_PROGRESS", "acme-op", ""),
        ("RESOLVED", "acme-op", ""),
    ]


@pytest.mark.django_db
def test_false_alarm_closes_a_new_alert(acme: Tenant, acme_client: APIClient):
    alert = make_alert("acme-panic")
    response = acme_client.post(f"/api/alerts/{alert.pk}/false_alarm/")
    assert response.status_code == 200
    alert.refresh_from_db()
    assert alert.status == AlertStatus.FALSE_ALARM
    assert not alert.is_active


@pytest.mark.django_db
def test_an_illegal_transition_is_a_409_that_says_why(acme: Tenant, acme_client: APIClient):
    alert = make_alert("acme-panic")
    assert acme_client.post(f"/api/alerts/{alert.pk}/resolve/").status_code == 200
    response = acme_client.post(f"/api/alerts/{alert.pk}/acknowledge/")
    assert response.status_code == 409
    assert response.json()["detail"] == "an alert in status RESOLVED cannot become ACKNOWLEDGED"
    assert alert.transitions.count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_action_is_broadcast_to_its_own_tenants_group_and_no_other(redis_client: object):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    acme_alert, globex_alert = make_alert("acme-panic"), make_alert("globex-panic")
    acme_client = client_for(operator(acme, "acme-op"))
    globex_client = client_for(operator(globex, "globex-op"))

    async def act_and_listen() -> tuple[dict[str, Any], dict[str, Any]]:
        layer = get_channel_layer()
        acme_channel, globex_channel = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(tenant_group(acme.pk), acme_channel)
        await layer.group_add(tenant_group(globex.pk), globex_channel)
        acknowledged = await sync_to_async(acme_client.post)(
            f"/api/alerts/{acme_alert.pk}/acknowledge/"
        )
        assert acknowledged.status_code == 200
        # Sent after acme's event: globex's first message shows acme's never reached it.
        resolved = await sync_to_async(globex_client.post)(
            f"/api/alerts/{globex_alert.pk}/resolve/"
        )
        assert resolved.status_code == 200
        return (
            await asyncio.wait_for(layer.receive(acme_channel), 5),
            await asyncio.wait_for(layer.receive(globex_channel), 5),
        )

    to_acme, to_globex = async_to_sync(act_and_listen)()
    assert to_acme["type"] == "alert_updated"
    assert to_acme["data"]["id"] == acme_alert.pk
    assert to_acme["data"]["status"] == "ACKNOWLEDGED"
    assert to_globex["data"]["id"] == globex_alert.pk
    assert to_globex["data"]["status"] == "RESOLVED"


# --- Alert and device lists ------------------------------------------------------------------


@pytest.mark.django_db
def test_alerts_are_newest_first_and_filter_by_every_field(acme: Tenant, acme_client: APIClient):
    panic = make_alert("acme-panic", minutes_ago=10)
    fire = make_alert("acme-smoke", "FIRE", "HIGH", minutes_ago=5)
    sos = make_alert("acme-panic", "SOS", "CRITICAL", minutes_ago=1)
    acme_client.post(f"/api/alerts/{sos.pk}/resolve/")

    assert ids(acme_client.get("/api/alerts/")) == [sos.pk, fire.pk, panic.pk]
    expected = {
        "status=NEW": [fire.pk, panic.pk],
        "severity=HIGH": [fire.pk],
        "alert_type=PANIC": [panic.pk],
        "device=acme-panic": [sos.pk, panic.pk],
        "site=acme-warehouse": [fire.pk],
        "active=true": [fire.pk, panic.pk],
        "active=false": [sos.pk],
        "severity=CRITICAL&active=true": [panic.pk],
    }
    for query, alert_ids in expected.items():
        assert ids(acme_client.get(f"/api/alerts/?{query}")) == alert_ids, query


@pytest.mark.django_db
def test_an_alerts_detail_carries_its_history_and_the_list_searches_text(
    acme: Tenant, acme_client: APIClient
):
    panic = make_alert("acme-panic")
    fire = make_alert("acme-smoke", "FIRE", "HIGH")
    Alert.objects.filter(pk=fire.pk).update(message="Smoke in aisle 4")
    acme_client.post(f"/api/alerts/{panic.pk}/acknowledge/", {"note": "on it"}, format="json")
    acme_client.post(f"/api/alerts/{panic.pk}/false_alarm/", {"note": "test button"})

    detail = acme_client.get(f"/api/alerts/{panic.pk}/").json()
    steps = [(s["from_status"], s["to_status"], s["by"], s["note"]) for s in detail["history"]]
    assert steps == [
        ("NEW", "ACKNOWLEDGED", "acme-op", "on it"),
        ("ACKNOWLEDGED", "FALSE_ALARM", "acme-op", "test button"),
    ]
    assert all(s["at"] for s in detail["history"])
    expected = {
        "search=AISLE": [fire.pk],  # the message, in any case
        "search=panic": [panic.pk],  # the device id
        "search=warehouse": [fire.pk],  # the site
        "search=panic&active=false": [panic.pk],
        "search=nothing-like-it": [],
    }
    for query, alert_ids in expected.items():
        assert ids(acme_client.get(f"/api/alerts/?{query}")) == alert_ids, query


@pytest.mark.django_db
def test_the_dashboards_session_reads_alerts_but_acts_only_with_its_csrf_token(acme: Tenant):
    alert = make_alert("acme-panic")
    browser = APIClient(enforce_csrf_checks=True)  # as the /noc/ page calls the API
    browser.force_login(operator(acme, "acme-op"))
    assert browser.get(f"/api/alerts/{alert.pk}/").status_code == 200
    forged = browser.post(f"/api/alerts/{alert.pk}/acknowledge/", {"note": "x"}, format="json")
    assert forged.status_code == 403
    assert "CSRF" in forged.json()["detail"]
    alert.refresh_from_db()
    assert alert.status == AlertStatus.NEW


@pytest.mark.django_db
def test_a_bad_alert_filter_is_a_400_naming_the_parameter(acme: Tenant, acme_client: APIClient):
    for query, parameter in [("status=OPEN", "status"), ("active=maybe", "active")]:
        response = acme_client.get(f"/api/alerts/?{query}")
        assert response.status_code == 400, query
        assert list(response.json()) == [parameter]


@pytest.mark.django_db
def test_devices_filter_by_status_kind_and_site(acme: Tenant, acme_client: APIClient):
    Device.objects.filter(device_id="acme-smoke").update(status=Device.Status.OFFLINE)
    expected = {
        "status=OFFLINE": ["acme-smoke"],
        "kind=panic_button": ["acme-panic"],
        "site=acme-hq": ["acme-panic"],
        "site=elsewhere": [],
    }
    for query, device_ids in expected.items():
        assert ids(acme_client.get(f"/api/devices/?{query}"), "device_id") == device_ids, query
    assert acme_client.get("/api/devices/?kind=toaster").status_code == 400


@pytest.mark.django_db
def test_device_detail_carries_its_latest_telemetry_location_and_sensor_reading(
    acme: Tenant, acme_client: APIClient
):
    make_reading(TelemetryReading, "acme-panic", 1, battery=80)
    make_reading(TelemetryReading, "acme-panic", 30, battery=95)  # older, stored later
    make_reading(GuardLocation, "acme-panic", 2, lat=12.97, lon=77.59)
    make_reading(SensorReading, "acme-smoke", 1, sensor_type="smoke", value=3.0)

    detail = acme_client.get("/api/devices/acme-panic/").json()
    assert detail["device_id"] == "acme-panic"
    assert detail["latest_telemetry"]["battery"] == 80
    assert detail["latest_location"]["lat"] == 12.97
    assert detail["latest_sensor_reading"] is None


@pytest.mark.django_db
def test_a_limit_above_1000_is_served_as_1000_rows(acme: Tenant, acme_client: APIClient):
    Device.objects.bulk_create(
        Device(tenant=acme, device_id=f"acme-{number:04}") for number in range(1000)
    )
    page = acme_client.get("/api/devices/?limit=100000").json()
    assert page["count"] == 1002
    assert len(page["results"]) == 1000
    assert "limit=1000" in page["next"]


# --- Readings --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readings_are_of_one_kind_newest_first_within_the_time_range(
    acme: Tenant, acme_client: APIClient
):
    for minutes_ago in (50, 30, 10):
        make_reading(TelemetryReading, "acme-panic", minutes_ago, battery=minutes_ago)
    make_reading(GuardLocation, "acme-panic", 20, lat=1.0, lon=2.0)
    url = "/api/devices/acme-panic/readings/"

    def batteries(**query: str) -> list[Any]:
        return ids(acme_client.get(url, {"kind": "telemetry", **query}), "battery")

    assert batteries() == [10, 30, 50]
    assert batteries(since=(NOW - timedelta(minutes=40)).isoformat()) == [10, 30]
    assert batteries(until=(NOW - timedelta(minutes=30)).isoformat()) == [50]
    assert batteries(
        since=(NOW - timedelta(minutes=40)).isoformat(),
        until=(NOW - timedelta(minutes=20)).isoformat(),
    ) == [30]
    assert ids(acme_client.get(url, {"kind": "gps"}), "lat") == [1.0]
    assert ids(acme_client.get(url, {"kind": "system_health"}), "cpu") == []


@pytest.mark.django_db
def test_bad_readings_parameters_are_a_400_naming_the_parameter(
    acme: Tenant, acme_client: APIClient
):
    url = "/api/devices/acme-panic/readings/"
    earlier = (NOW - timedelta(hours=1)).isoformat()
    for query, parameter in [
        ({}, "kind"),
        ({"kind": "weather"}, "kind"),
        ({"kind": "gps", "since": "yesterday"}, "since"),
        ({"kind": "gps", "until": "2024-13-45T00:00:00Z"}, "until"),
        ({"kind": "gps", "since": NOW.isoformat(), "until": earlier}, "until"),
    ]:
        response = acme_client.get(url, query)
        assert response.status_code == 400, query
        assert list(response.json()) == [parameter], response.json()


# --- Schema ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_schema_is_valid_openapi_listing_every_endpoint_and_has_a_swagger_page():
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")
    assert {
        "/api/token/",
        "/api/token/refresh/",
        "/api/token/logout/",
        "/api/alerts/",
        "/api/alerts/{id}/",
        "/api/alerts/{id}/acknowledge/",
        "/api/alerts/{id}/start/",
        "/api/alerts/{id}/resolve/",
        "/api/alerts/{id}/false_alarm/",
        "/api/devices/",
        "/api/devices/{device_id}/",
        "/api/devices/{device_id}/readings/",
    } <= set(schema["paths"])
    assert "409" in schema["paths"]["/api/alerts/{id}/acknowledge/"]["post"]["responses"]
    assert "history" in schema["components"]["schemas"]["AlertDetail"]["properties"]
    assert APIClient().get("/api/docs/").status_code == 200


@pytest.mark.django_db
def test_the_swagger_page_loads_nothing_from_another_host():
    html = APIClient().get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets), assets
    for asset in assets:
        assert asset.startswith(settings.STATIC_URL), asset
        assert finders.find(asset.removeprefix(settings.STATIC_URL)), asset
    assert "cdn" not in html
    assert "https://" not in html


@pytest.mark.django_db
def test_the_schema_documents_every_error_an_operation_answers():
    # Found by tests/security/test_api_schema_fuzz.py: only the successes were documented.
    paths = json.loads(APIClient().get("/api/schema/?format=json").content)["paths"]

    def codes(path: str, method: str = "get") -> set[str]:
        return set(paths[path][method]["responses"])

    assert codes("/api/alerts/") == {"200", "400", "401", "403"}
    assert codes("/api/alerts/{id}/") == {"200", "401", "403", "404"}
    assert codes("/api/alerts/{id}/acknowledge/", "post") == {
        "200",
        "400",
        "401",
        "403",
        "404",
        "409",
    }
    assert codes("/api/devices/{device_id}/readings/") == {"200", "400", "401", "403", "404"}
    assert codes("/api/token/", "post") == {"200", "400", "401", "429"}
    assert codes("/api/schema/") == {"200", "404"}  # a ?format= it does not render


@pytest.mark.django_db
def test_an_id_no_route_takes_is_a_json_404_like_any_other(acme_client: APIClient):
    # The router's id pattern refuses a dot: /api/alerts/0.5/ used to be Django's HTML page.
    for url in ("/api/alerts/0.5/", "/api/alerts/1e-9/acknowledge/", "/api/nothing/here/"):
        response = acme_client.post(url) if "acknowledge" in url else acme_client.get(url)
        assert response.status_code == 404, url
        assert response.json() == {"detail": "Not found."}, url


@pytest.mark.django_db
def test_the_api_reads_json_or_a_form_but_no_multipart_body():
    # Daphne answers a malformed multipart body itself, with a bare 400: none is accepted.
    client = APIClient()
    multipart = client.post("/api/token/refresh/", {"refresh": "x"}, format="multipart")
    assert multipart.status_code == 415
    assert client.post("/api/token/refresh/", "refresh=x", content_type=FORM).status_code == 401
    assert client.post("/api/token/refresh/", {"refresh": "x"}).status_code == 401


@pytest.mark.django_db
def test_the_schema_generates_without_warnings(tmp_path: Path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml"))


@pytest.fixture
def empty_throttle_history() -> Iterator[None]:
    """Throttle counts live in the real cache; no other test may inherit this one's."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_throttle_history")
def test_token_requests_are_rate_limited_per_client_address_whatever_x_forwarded_for_says():
    # Password guessing itself is locked out sooner (tests/security/test_login_throttling.py);
    # this is the plain rate, here on refresh, which takes no password.
    client = APIClient()

    def refresh(address: str, forwarded_for: str) -> int:
        return client.post(
            "/api/token/refresh/",
            {"refresh": "not-a-token"},
            REMOTE_ADDR=address,
            HTTP_X_FORWARDED_FOR=forwarded_for,
        ).status_code

    codes = [refresh("192.0.2.10", f"198.51.100.{n}") for n in range(21)]
    assert codes[:20] == [401] * 20
    assert codes[20] == 429
    assert refresh("192.0.2.11", "198.51.100.1") == 401


# --- Message formats -------------------------------------------------------------------------


@pytest.mark.django_db
def test_message_formats_serve_each_kinds_json_schema_to_operators_only(acme_client: APIClient):
    assert APIClient().get("/api/message-formats/").status_code == 401
    listed = acme_client.get("/api/message-formats/")
    assert listed.status_code == 200, listed.content
    by_kind = {row["kind"]: row for row in listed.json()}
    assert set(by_kind) == {"alert", "gps", "telemetry", "command_ack", "sensor", "system_health"}
    assert by_kind["telemetry"]["heartbeat"] is True
    assert by_kind["sensor"]["documentation"] == "docs/messages.md#sensor"

    sensor = acme_client.get("/api/message-formats/sensor/")
    assert sensor.status_code == 200, sensor.content
    assert sensor.json() == by_kind["sensor"]["json_schema"]
    assert set(sensor.json()["required"]) == {"timestamp", "type"}
    assert acme_client.get("/api/message-formats/nothing/").status_code == 404
    paths = json.loads(APIClient().get("/api/schema/?format=json").content)["paths"]
    assert {"/api/message-formats/", "/api/message-formats/{kind}/"} <= set(paths)
