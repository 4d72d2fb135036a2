"""The device pages in a real browser (Debian's Chromium driven by Playwright) on a real Daphne.

One test, one browser: a sensor's page charts its stored readings and sends a command; a guard's
page maps its positions and its tenant's geofences, never another tenant's. With
NOC_SCREENSHOTS=1 it also saves docs/screenshots/device-sensor.png and device-guard.png.
"""

from __future__ import annotations

import math
import os
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.factories import OPERATOR_PASSWORD, create_tenant_with_devices, operator
from tests.noc.test_dashboard_browser import browser  # noqa: F401  (the fixture)
from tests.services import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

SENSOR_POINTS, TELEMETRY_POINTS, POSITIONS = 30, 20, 12
# A geofence's name as an attacker would type it: markup that runs if a page reads it as HTML.
HOSTILE_NAME = 'gate <img src=x onerror="document.body.dataset.injected=1">'
YARD = [[12.9700, 77.5900], [12.9700, 77.5960], [12.9740, 77.5960], [12.9740, 77.5900]]
SCREENSHOTS = ROOT / "docs" / "screenshots"


def store(model: Any, device: Any, rows: list[dict[str, Any]]) -> None:
    """Readings a minute apart, the last one now."""
    now = timezone.now()
    model.objects.bulk_create(
        model(
            tenant_id=device.tenant_id,
            device=device,
            idempotency_key=uuid.uuid4().hex,
            recorded_at=now - timedelta(minutes=len(rows) - i),
            received_at=now - timedelta(minutes=len(rows) - i),
            **fields,
        )
        for i, fields in enumerate(rows)
    )


def stored_site() -> Any:
    from apps.alerts.models import AlertType, Severity
    from apps.alerts.services import AlertSignal, raise_alert
    from apps.devices.models import (
        Device,
        Geofence,
        GuardLocation,
        SensorReading,
        TelemetryReading,
    )

    acme = create_tenant_with_devices("acme", "sensor-1", "guard-1")
    globex = create_tenant_with_devices("globex")
    Device.objects.filter(device_id="sensor-1").update(kind="sensor", site="server room")
    Device.objects.update(status="ONLINE", last_seen=timezone.now(), battery=76.0, signal=-62.0)
    sensor = Device.objects.get(device_id="sensor-1")
    guard = Device.objects.get(device_id="guard-1")
    store(
        SensorReading,
        sensor,
        [
            {"sensor_type": "temperature", "value": 21 + 3 * math.sin(i / 4)}
            for i in range(SENSOR_POINTS)
        ],
    )
    for device in (sensor, guard):
        store(
            TelemetryReading,
            device,
            [{"battery": 95 - i, "signal": -60 - i % 5} for i in range(TELEMETRY_POINTS)],
        )
    # A walk round the yard, the last two steps outside it.
    store(
        GuardLocation,
        guard,
        [
            {
                "lat": 12.9705 + 0.0003 * i,
                "lon": 77.5905 + 0.0006 * i,
                "inside_geofence": i < POSITIONS - 2,
            }
            for i in range(POSITIONS)
        ],
    )
    Geofence.objects.create(tenant=acme, name="yard", shape="polygon", polygon=YARD)
    Geofence.objects.create(
        tenant=acme,
        name=HOSTILE_NAME,
        shape="circle",
        center_lat=12.972,
        center_lon=77.597,
        radius_m=80,
    )
    Geofence.objects.create(tenant=globex, name="elsewhere", shape="polygon", polygon=YARD)
    raise_alert(
        AlertSignal(
            device=guard,
            alert_type=AlertType.GEOFENCE_VIOLATION,
            severity=Severity.HIGH,
            seen_at=timezone.now(),
            message="outside every active geofence (gate, yard)",
        )
    )
    return acme


def open_device_page(page: Any, port: int, device_id: str) -> None:
    page.goto(f"http://127.0.0.1:{port}/noc/devices/{device_id}/")
    if page.locator("#sign-in").count():  # the login page, which comes back here
        page.fill("#id_username", "alice")
        page.fill("#id_password", OPERATOR_PASSWORD)
        page.click("#sign-in")
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    assert page.get_attribute("body", "data-loaded") == "true"


def test_device_pages_chart_stored_readings_send_commands_and_map_a_guard_with_its_geofences(
    daphne_server: int,
    browser: Any,  # noqa: F811
):
    operator(stored_site(), "alice")
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()

    open_device_page(page, daphne_server, "sensor-1")
    temperature = page.locator(".chart[data-kind='sensor:temperature']")
    assert temperature.get_attribute("data-points") == str(SENSOR_POINTS)
    assert temperature.locator("canvas").count() == 1
    telemetry = page.locator(".chart[data-kind='telemetry']")
    assert telemetry.get_attribute("data-points") == str(TELEMETRY_POINTS)
    page.fill("#command-name", "reboot")
    page.click("#command-send")
    page.wait_for_selector("#device-commands tbody tr:has-text('reboot')", timeout=10_000)
    assert page.inner_text("#command-result") == "queued"
    if os.environ.get("NOC_SCREENSHOTS"):
        page.screenshot(path=str(SCREENSHOTS / "device-sensor.png"), full_page=True)

    open_device_page(page, daphne_server, "guard-1")
    assert page.get_attribute("#map", "data-positions") == str(POSITIONS)
    assert page.get_attribute("#map", "data-geofences") == "2"  # acme's, not globex's
    assert page.locator("#map path.geofence").count() == 2
    # A geofence's name is shown as text, never run as markup.
    page.locator("#map path.geofence").first.dispatch_event("mouseover")
    assert page.inner_text("#map .leaflet-tooltip") == HOSTILE_NAME
    assert page.locator("#map .leaflet-tooltip img").count() == 0
    assert page.get_attribute("body", "data-injected") is None
    assert page.locator("#map path.position").count() == POSITIONS
    assert page.locator("#map path.track").count() == 1
    assert page.locator("#map img.leaflet-tile").count() == 0  # no tile server set
    assert page.locator("#device-alerts tbody tr:has-text('GEOFENCE_VIOLATION')").count() == 1
    if os.environ.get("NOC_SCREENSHOTS"):
        page.screenshot(path=str(SCREENSHOTS / "device-guard.png"), full_page=True)
