"""The NOC page's alert console in a real browser on a real stack: one operator's shift, in one
test (one Daphne, one browser): a critical alert arriving under fifty lower ones, the filters,
every transition and its history, the phone layout, and a Daphne restart.

NOC_SCREENSHOTS=1 also saves docs/screenshots/dashboard-desktop.png and dashboard-phone.png.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from apps.alerts.models import AlertType, Severity
from apps.alerts.services import AlertSignal, raise_alert, raise_alerts
from apps.devices.models import Device
from apps.devices.services import natural_key, register_device
from apps.tenants.models import Tenant
from tests import environment
from tests.conftest import start_daphne
from tests.factories import operator, panic

# The NOC's browser fixture (Debian's chromium), re-exported so pytest finds it here.
from tests.noc.test_dashboard_browser import browser as browser
from tests.noc.test_dashboard_browser import signed_in_page
from tests.services import ROOT, Service, mqtt_publish

pytestmark = pytest.mark.django_db(transaction=True)

SCREENSHOTS = ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}


def fifty_lower_alerts(tenant: Tenant) -> None:
    """25 sensors at two sites, each with a LOW battery alert and a MEDIUM offline alert."""
    now = datetime.now(tz=UTC)
    signals = []
    for n in range(1, 26):
        device, _ = register_device(
            tenant, f"sensor-{n}", Device.Kind.SENSOR, site="hq" if n % 2 else "depot"
        )
        where = "the boiler room" if n == 13 else f"corridor {n}"
        seen = now - (timedelta(days=2) if n == 25 else timedelta(minutes=n))
        signals += [
            AlertSignal(device, AlertType.LOW_BATTERY, Severity.LOW, seen, "battery at 12 %"),
            AlertSignal(device, AlertType.OFFLINE, Severity.MEDIUM, seen, f"silent in {where}"),
        ]
    raise_alerts(signals)


def shown(page: Any, total: int) -> None:
    """Wait until the console counts `total` alerts (on all its pages) in its current view."""
    page.wait_for_selector(f"#page-info:text-matches('· {total} (active|closed)$')")


def in_viewport(box: dict[str, float], viewport: dict[str, int]) -> bool:
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= viewport["width"]
        and box["y"] + box["height"] <= viewport["height"]
    )


def move(page: Any, action: str, note: str, step: str) -> None:
    """Act on the alert open in the side panel, with a note; wait for its history to show it."""
    page.fill("#alert-note", note)
    page.click(f"#panel-actions button.{action}_alert")
    page.wait_for_selector(f"#alert-history li:has-text('{step}'):has-text('{note}')")


def screenshot(page: Any, name: str) -> None:
    if os.environ.get("NOC_SCREENSHOTS") == "1":
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(SCREENSHOTS, name)))


def test_the_console_puts_a_new_critical_alert_on_top_rings_once_and_keeps_the_shifts_record(
    bus: Service, browser: Any, scratch_dir: Path
):
    acme = Tenant.objects.create(name="acme")
    register_device(acme, "panic-007", Device.Kind.PANIC_BUTTON, site="gatehouse")
    fifty_lower_alerts(acme)
    operator(acme, "alice")
    log = scratch_dir / "log" / "daphne-console.log"
    daphne, port = start_daphne(log)
    try:
        page = signed_in_page(
            browser, port, "alice", viewport=DESKTOP, permissions=["notifications"]
        )
        page.set_default_timeout(10_000)
        shown(page, 50)
        assert page.get_attribute("body", "data-alarms") == "0"  # the snapshot rings nothing
        listed = page.locator("#devices tbody tr td:first-child").all_inner_texts()
        assert listed[:4] == ["panic-007", "sensor-1", "sensor-2", "sensor-3"], listed  # natural
        assert listed == sorted(listed, key=natural_key)

        # A critical alert from a panic button: on top of the fifty, ringing once for the
        # provisional announcement and the stored alert together.
        mqtt_publish(environment.MQTT_PORT, [("alert/panic-007/panic", panic(message="lobby"))])
        top = "#alerts tbody tr:first-child"
        page.wait_for_selector(f"{top}:has-text('panic-007'):has-text('NEW')")
        shown(page, 51)
        assert "CRITICAL" in page.inner_text(top)
        assert page.locator("#alerts tbody tr").count() == 25  # a page
        assert page.get_attribute("body", "data-alarms") == "1"
        assert page.get_attribute("body", "data-notifications") == "1"
        assert page.get_attribute(f"{top} a", "href") == "/noc/devices/panic-007/"
        screenshot(page, "dashboard-desktop.png")

        # A phone: the critical alert is a card whose buttons are all on the screen.
        page.set_viewport_size(PHONE)
        card = page.locator(top)
        card.scroll_into_view_if_needed()
        buttons = card.locator("td.actions button")
        assert buttons.all_inner_texts() == ["Acknowledge", "Details…"]  # the next step, and all
        for i in range(buttons.count()):
            assert buttons.nth(i).is_visible()
            assert in_viewport(buttons.nth(i).bounding_box(), PHONE), buttons.nth(i).inner_text()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(page, "dashboard-phone.png")
        page.set_viewport_size(DESKTOP)

        # Filters and search narrow the table.
        page.select_option("#filter-severity", "LOW")
        shown(page, 25)
        page.fill("#filter-site", "depot")
        shown(page, 12)
        rows = page.locator("#alerts tbody tr").all_inner_texts()
        assert all("LOW" in row and "depot" in row for row in rows), rows
        page.select_option("#filter-severity", "")
        page.fill("#filter-site", "")
        page.fill("#filter-search", "BOILER")
        shown(page, 1)
        assert "sensor-13" in page.inner_text("#alerts tbody tr")
        page.fill("#filter-search", "sensor-25")
        shown(page, 2)
        # Another day's time carries its date; today's is the time only (checked at the end).
        assert "," in page.inner_text("#alerts tbody tr >> nth=0 >> td >> nth=8")
        page.fill("#filter-search", "")
        shown(page, 51)

        # Each transition, with a note; the history says who, when and why.
        page.click(f"{top} button.details")
        page.wait_for_selector("#alert-panel:has-text('panic-007')")
        move(page, "acknowledge", "on my way", "NEW → ACKNOWLEDGED")
        move(page, "start", "guard at the gate", "ACKNOWLEDGED → IN_PROGRESS")
        move(page, "resolve", "pressed by mistake", "IN_PROGRESS → RESOLVED")
        history = page.locator("#alert-history li").all_inner_texts()
        assert len(history) == 3
        assert all("by alice at" in step for step in history), history
        page.click("#panel-close")
        shown(page, 50)
        sensor = "#alerts tbody tr:has-text('sensor-13'):has-text('OFFLINE')"
        page.click(f"{sensor} button.details")
        move(page, "false_alarm", "battery swapped", "NEW → FALSE_ALARM")
        page.click("#panel-close")
        shown(page, 49)
        # Bulk: two rows, one action, one note.
        page.select_option("#filter-severity", "LOW")
        page.fill("#filter-site", "hq")
        shown(page, 13)
        page.check("#alerts tbody tr:nth-child(1) input.select")
        page.check("#alerts tbody tr:nth-child(2) input.select")
        page.fill("#bulk-note", "batteries ordered")
        page.click("#bulk-acknowledge")
        page.select_option("#filter-status", "ACKNOWLEDGED")
        shown(page, 2)
        page.select_option("#filter-severity", "")
        page.fill("#filter-site", "")
        page.select_option("#filter-status", "")

        # Closed alerts come from the REST API, searchable, each with its history.
        page.click("#view-closed")
        shown(page, 2)
        page.fill("#filter-search", "panic-007")
        shown(page, 1)
        page.click("#alerts tbody tr:has-text('RESOLVED') button.details")
        page.wait_for_selector("#alert-history li:has-text('pressed by mistake')")
        assert page.locator("#alert-history li").count() == 3
        page.click("#panel-close")
        page.fill("#filter-search", "")
        page.click("#view-active")
        shown(page, 49)

        # Daphne restarts; an alert raised meanwhile shows without a reload, and rings.
        daphne.stop()
        page.wait_for_selector("#banner:has-text('reconnecting')", state="visible")
        device = Device.objects.get(device_id="panic-007")
        seen = datetime.now(tz=UTC)
        signal = AlertSignal(device, AlertType.PANIC, Severity.CRITICAL, seen, "gate, again")
        alert_id = raise_alert(signal).data["id"]  # stored; nobody was listening
        daphne, _ = start_daphne(log, port)
        page.wait_for_selector(f"{top}[data-alert-id='{alert_id}']", timeout=30_000)
        assert page.locator("#banner").is_hidden()
        assert page.get_attribute("body", "data-alarms") == "2"
        assert re.fullmatch(r"\d{1,2}:\d\d:\d\d( [AP]M)?", page.inner_text(f"{top} >> td >> nth=8"))
    finally:
        daphne.stop()
