"""/api/devices/ and /api/geofences/: natural order, search and filters; registering and editing
with register_device's rules; the model permissions; another tenant's rows not found."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from apps.devices.models import Device, Geofence, Guard
from apps.tenants.models import Tenant, User
from tests.factories import create_tenant_with_devices, operator
from tests.noc.test_api import client_for

# Tokens are checked against revocations kept in the real Redis.
pytestmark = [pytest.mark.usefixtures("redis_server"), pytest.mark.django_db]

SQUARE = [[12.0, 77.0], [12.0, 77.1], [12.1, 77.1], [12.1, 77.0]]
ADMINISTRATOR_PERMISSIONS = [
    "add_device",
    "change_device",
    "add_geofence",
    "change_geofence",
    "delete_geofence",
]


def administrator(tenant: Tenant, username: str) -> User:
    """An operator whose tenant's administrator granted the device and geofence permissions."""
    user = operator(tenant, username, password=None)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="devices",
            codename__in=ADMINISTRATOR_PERMISSIONS,
        )
    )
    return User.objects.get(pk=user.pk)  # a fresh permission cache


def device_ids(response: object) -> list[str]:
    assert response.status_code == 200, response.content  # type: ignore[attr-defined]
    return [row["device_id"] for row in response.json()["results"]]  # type: ignore[attr-defined]


def test_the_device_list_is_in_natural_order_searched_filtered_and_paged():
    acme = create_tenant_with_devices("acme", "burst-10", "burst-2", "burst-1", "door-3")
    create_tenant_with_devices("globex", "burst-3")
    Device.objects.filter(device_id="burst-10").update(status="ONLINE", name="Lobby")
    Device.objects.filter(device_id="door-3").update(site="Burst depot")
    client = client_for(operator(acme, "alice", password=None))

    assert device_ids(client.get("/api/devices/")) == ["burst-1", "burst-2", "burst-10", "door-3"]
    assert device_ids(client.get("/api/devices/?search=BURST")) == [
        "burst-1",
        "burst-2",
        "burst-10",
        "door-3",  # by its site
    ]
    assert device_ids(client.get("/api/devices/?search=lobby")) == ["burst-10"]
    assert device_ids(client.get("/api/devices/?status=ONLINE")) == ["burst-10"]
    second = client.get("/api/devices/?limit=2&offset=2").json()
    assert [row["device_id"] for row in second["results"]] == ["burst-10", "door-3"]
    assert second["count"] == 4
    assert client.get("/api/devices/?status=ASLEEP").status_code == 400


def test_a_device_is_registered_in_the_callers_tenant_and_edited():
    acme = create_tenant_with_devices("acme")
    globex = create_tenant_with_devices("globex")
    client = client_for(administrator(acme, "admin"))

    created = client.post(
        "/api/devices/",
        {"device_id": "guard-7", "kind": "gps_tracker", "site": "north", "tenant": globex.pk},
    )
    assert created.status_code == 201, created.content
    assert created.json()["status"] == "UNKNOWN"
    device = Device.objects.get(device_id="guard-7")
    assert device.tenant_id == acme.pk  # never the body's
    assert Guard.objects.get(device=device).tenant_id == acme.pk  # as register_device makes it

    assert device.report_interval is None  # its kind's (apps/mqtt/presence.py)

    edited = client.patch(
        "/api/devices/guard-7/", {"name": "Gate patrol", "site": "south", "report_interval": "120"}
    )
    assert edited.status_code == 200, edited.content
    device.refresh_from_db()
    assert (device.name, device.site) == ("Gate patrol", "south")
    assert device.report_interval == timedelta(seconds=120)
    too_often = client.patch("/api/devices/guard-7/", {"report_interval": "5"})
    assert too_often.status_code == 400
    assert set(too_often.json()) == {"report_interval"}
    refused = client.patch("/api/devices/guard-7/", {"device_id": "guard-8", "kind": "door"})
    assert refused.status_code == 400
    assert set(refused.json()) == {"device_id", "kind"}
    assert client.put("/api/devices/guard-7/", {"device_id": "guard-7"}).status_code == 405
    # No DELETE (its history hangs on it): refused, by the permission check that runs first.
    assert client.delete("/api/devices/guard-7/").status_code in (403, 405)
    assert Device.objects.filter(device_id="guard-7").exists()


def test_a_device_id_register_device_refuses_is_a_400_naming_the_field():
    acme = create_tenant_with_devices("acme", "door-1")
    create_tenant_with_devices("globex", "door-9")
    client = client_for(administrator(acme, "admin"))
    reserved = sorted(settings.DEVICE_RESERVED_IDS)[0]

    for device_id, reason in (
        ("door 2/#", "a device id is 1-64 letters"),
        (reserved, "reserved for the application's MQTT account"),
        ("door-1", "already registered"),
        ("door-9", "already registered"),  # another tenant's: the same answer as one's own
    ):
        response = client.post("/api/devices/", {"device_id": device_id, "kind": "door"})
        assert response.status_code == 400, device_id
        [message] = response.json()["device_id"]
        assert reason in message, message
    assert Device.objects.filter(tenant=acme).count() == 1


def test_registering_or_editing_devices_and_geofences_needs_the_models_permissions():
    acme = create_tenant_with_devices("acme", "door-1")
    Geofence.objects.create(tenant=acme, name="yard", shape="polygon", polygon=SQUARE)
    client = client_for(operator(acme, "alice", password=None))  # NOC and alert permissions only
    fence = Geofence.objects.get()

    assert client.post("/api/devices/", {"device_id": "door-2", "kind": "door"}).status_code == 403
    assert client.patch("/api/devices/door-1/", {"name": "x"}).status_code == 403
    assert client.post("/api/geofences/", {"name": "x"}).status_code == 403
    assert client.patch(f"/api/geofences/{fence.pk}/", {"active": False}).status_code == 403
    assert client.delete(f"/api/geofences/{fence.pk}/").status_code == 403
    assert client.get(f"/api/geofences/{fence.pk}/").status_code == 200  # reading needs none


def test_another_tenants_device_and_geofence_are_not_found_for_editing():
    acme = create_tenant_with_devices("acme")
    globex = create_tenant_with_devices("globex", "door-9")
    foreign = Geofence.objects.create(tenant=globex, name="g", shape="polygon", polygon=SQUARE)
    client = client_for(administrator(acme, "admin"))

    for path in ("/api/devices/door-9/", "/api/devices/door-0/", f"/api/geofences/{foreign.pk}/"):
        assert client.patch(path, {"name": "mine"}).status_code == 404, path
        assert client.get(path).status_code == 404, path
    assert client.delete(f"/api/geofences/{foreign.pk}/").status_code == 404
    assert client.get("/api/geofences/").json()["results"] == []
    assert Geofence.objects.get(pk=foreign.pk).name == "g"


def test_geofences_are_validated_created_edited_filtered_and_deleted():
    acme = create_tenant_with_devices("acme")
    client = client_for(administrator(acme, "admin"))

    def post(body: dict[str, object]) -> object:
        return client.post("/api/geofences/", json.dumps(body), content_type="application/json")

    too_few = post({"name": "line", "shape": "polygon", "polygon": SQUARE[:2]})
    assert too_few.status_code == 400
    assert "3 to 500 points" in too_few.json()["polygon"][0]
    no_radius = post({"name": "c", "shape": "circle", "center_lat": 12.0, "center_lon": 77.0})
    assert no_radius.status_code == 400
    assert set(no_radius.json()) == {"radius_m"}
    far = post({"name": "p", "shape": "polygon", "polygon": [[91, 0], [0, 0], [0, 1]]})
    assert far.status_code == 400

    yard = post({"name": "yard", "shape": "polygon", "polygon": SQUARE, "tenant": 999})
    gate = post(
        {"name": "gate", "shape": "circle", "center_lat": 12, "center_lon": 77, "radius_m": 50}
    )
    assert (yard.status_code, gate.status_code) == (201, 201), (yard.content, gate.content)
    assert {fence.tenant_id for fence in Geofence.objects.all()} == {acme.pk}
    gate_id = gate.json()["id"]

    assert client.patch(f"/api/geofences/{gate_id}/", {"radius_m": 0}).status_code == 400
    assert client.patch(f"/api/geofences/{gate_id}/", {"active": False}).status_code == 200
    active = client.get("/api/geofences/?active=true").json()["results"]
    assert [fence["name"] for fence in active] == ["yard"]
    assert client.delete(f"/api/geofences/{gate_id}/").status_code == 204
    assert not Geofence.objects.filter(pk=gate_id).exists()


def test_the_schema_documents_registering_editing_and_geofences():
    paths = json.loads(APIClient().get("/api/schema/?format=json").content)["paths"]

    assert set(paths["/api/devices/"]) == {"get", "post"}
    assert set(paths["/api/devices/{device_id}/"]) == {"get", "patch"}
    assert set(paths["/api/geofences/"]) == {"get", "post"}
    assert set(paths["/api/geofences/{id}/"]) == {"get", "patch", "delete"}
    assert {"400", "401", "403"} <= set(paths["/api/devices/"]["post"]["responses"])
    assert "404" in paths["/api/devices/{device_id}/"]["patch"]["responses"]
    search = [p["name"] for p in paths["/api/devices/"]["get"]["parameters"]]
    assert {"search", "status", "limit", "offset"} <= set(search)
