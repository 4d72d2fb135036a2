"""/noc/devices/ and /noc/devices/<device_id>/: the tenant's devices only, in natural order,
filtered and paged; the device page's assets all served from here."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client, override_settings

from apps.devices.models import Device
from apps.noc.views import DEVICES_PER_PAGE
from tests.factories import create_tenant_with_devices, operator

# Signing in and out reaches the real Redis (sessions' revocation, login throttling).
pytestmark = [pytest.mark.usefixtures("redis_server"), pytest.mark.django_db]


def signed_in(username: str, tenant: object, *, permissions: bool = True) -> Client:
    client = Client()
    client.force_login(operator(tenant, username, password=None, permissions=permissions))
    return client


def listed(html: str) -> list[str]:
    return re.findall(r'<tr data-device-id="([^"]+)"', html)


def test_the_device_list_shows_the_tenants_devices_in_natural_order_filtered_and_paged():
    ids = [f"burst-{n}" for n in range(DEVICES_PER_PAGE + 5, 0, -1)]
    acme = create_tenant_with_devices("acme", *ids, "door-1")
    create_tenant_with_devices("globex", "burst-0")
    Device.objects.filter(device_id="burst-10").update(status="OFFLINE")
    client = signed_in("alice", acme)

    first = client.get("/noc/devices/").content.decode()
    assert listed(first) == [f"burst-{n}" for n in range(1, DEVICES_PER_PAGE + 1)]
    assert 'href="/noc/devices/burst-2/"' in first
    second = client.get("/noc/devices/?page=2").content.decode()
    assert listed(second) == [f"burst-{n}" for n in range(51, DEVICES_PER_PAGE + 6)] + ["door-1"]
    offline = client.get("/noc/devices/?status=OFFLINE").content.decode()
    assert listed(offline) == ["burst-10"]
    assert listed(client.get("/noc/devices/?search=DOOR").content.decode()) == ["door-1"]
    assert "burst-0" not in first + second


def test_another_tenants_device_page_is_a_404_exactly_as_a_missing_one():
    acme = create_tenant_with_devices("acme", "door-1")
    create_tenant_with_devices("globex", "door-9")
    client = signed_in("alice", acme)

    assert client.get("/noc/devices/door-1/").status_code == 200
    foreign, missing = client.get("/noc/devices/door-9/"), client.get("/noc/devices/door-0/")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content.replace(b"door-9", b"door-0") == missing.content


def test_the_device_pages_need_a_login_and_the_noc_permission():
    acme = create_tenant_with_devices("acme", "door-1")
    nobody = signed_in("mallory", acme, permissions=False)

    for path in ("/noc/devices/", "/noc/devices/door-1/"):
        assert Client().get(path).url.startswith(settings.LOGIN_URL)
        refused = nobody.get(path)
        assert refused.status_code == 403
        assert b"door-1" not in refused.content


def test_the_device_page_loads_its_scripts_from_here_and_no_tile_server_unless_set():
    acme = create_tenant_with_devices("acme", "guard-1", kind="gps_tracker")
    client = signed_in("alice", acme)

    html = client.get("/noc/devices/guard-1/").content.decode()
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert {"uPlot.iife.min.js", "leaflet.js", "device.js"} <= {a.rsplit("/", 1)[1] for a in assets}
    for asset in assets:
        assert finders.find(asset.removeprefix(settings.STATIC_URL)), asset
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)
    config = json.loads(re.search(r'id="device-config"[^>]*>(.*?)</script>', html, re.S)[1])
    assert (config["isGuard"], config["tileUrl"]) == (True, "")

    with override_settings(NOC_MAP_TILE_URL="/tiles/{z}/{x}/{y}.png"):
        html = client.get("/noc/devices/guard-1/").content.decode()
    assert "/tiles/{z}/{x}/{y}.png" in html
