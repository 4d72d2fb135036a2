"""The NOC page in a real browser (Debian's Chromium driven by Playwright) on a real stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from tests import environment
from tests.factories import OPERATOR_PASSWORD, create_tenant_with_devices, operator, panic
from tests.services import DeviceClient, Service, metric, mqtt_publish

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api as playwright_sync
    except ImportError:
        pytest.fail("playwright is not installed; `make test` installs it with the dev extras")
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed; `make test` installs Debian's chromium package")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous code and safe here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            # While that loop runs, Django keeps the thread's connections apart (asgiref holds
            # them per context when a loop is running): the test's ORM calls opened their own.
            # Closed here, while the loop still runs, or the test database's teardown finds
            # them open (PostgreSQL: "database ... is being accessed by other users").
            connections.close_all()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def signed_in_page(browser: Any, port: int, username: str, **context_options: Any) -> Any:
    page = browser.new_context(**context_options).new_page()
    page.goto(f"http://127.0.0.1:{port}/noc/")
    page.fill("#id_username", username)
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector("#connection.state-open", timeout=15_000)
    return page


def test_operators_see_alerts_live_act_on_them_and_never_see_another_tenants(
    bus: Service, daphne_server: int, browser: Any
):
    acme = create_tenant_with_devices("acme", "panic-007")
    globex = create_tenant_with_devices("globex", "panic-900")
    operator(acme, "alice")
    operator(acme, "carol")
    operator(globex, "bob")

    alice = signed_in_page(browser, daphne_server, "alice")
    carol = signed_in_page(browser, daphne_server, "carol")
    bob = signed_in_page(browser, daphne_server, "bob")

    mqtt_publish(environment.MQTT_PORT, [("alert/panic-007/panic", panic(message="lobby"))])
    row = "#alerts tbody tr:has-text('panic-007')"
    alice.wait_for_selector(row, timeout=10_000)
    carol.wait_for_selector(row, timeout=10_000)
    assert "CRITICAL" in alice.inner_text(row)
    # Shown as RECEIVED the moment the bus took it in (apps/mqtt/announce.py), then as stored.
    for page in (alice, carol):
        page.wait_for_selector(f"{row}:has-text('NEW')", timeout=10_000)
    assert alice.locator(row).count() == 1  # the stored alert replaced the received one

    alice.click(f"{row} button.acknowledge_alert")
    carol.wait_for_selector(f"{row}:has-text('ACKNOWLEDGED')", timeout=10_000)

    # bob's page is live (it shows its own tenant's alert) and never showed acme's.
    mqtt_publish(environment.MQTT_PORT, [("alert/panic-900/panic", panic(message="gate"))])
    bob.wait_for_selector("#alerts tbody tr:has-text('panic-900')", timeout=10_000)
    assert bob.locator(row).count() == 0
    assert "panic-007" not in bob.content()
    assert alice.locator("#devices tbody tr:has-text('panic-007')").count() == 1


def test_the_dashboard_requires_a_login(daphne_server: int, browser: Any, redis_client: object):
    page = browser.new_context().new_page()
    page.goto(f"http://127.0.0.1:{daphne_server}/noc/")
    assert "/accounts/login/" in page.url
    assert page.locator("#sign-in").count() == 1


def stream_device_updates(page: Any, tenant_id: int, *, stop_when: str = "false") -> None:
    """Send the page a quarter more than NOC_MAX_UNACKED_BYTES of device updates, at its pace.

    Stops early once the JavaScript condition `stop_when` holds.
    """
    from apps.core.events import Event, EventType, broadcast_events

    def updates(batteries: range) -> None:
        # 2 KB of padding per update; the page shows only the fields it knows.
        data = {"device_id": "panic-007", "status": "ONLINE", "site": "", "padding": "x" * 2000}
        events = [
            Event(tenant_id, EventType.DEVICE_STATUS, {"devices": [{**data, "battery": n}]})
            for n in batteries
        ]
        broadcast_events(events)

    count = 5 * settings.NOC_MAX_UNACKED_BYTES // 4 // 2000
    # Sent from another thread: async_to_sync refuses the one Playwright runs its loop in. 50 at
    # a time fit the channel layer's 100 messages per Daphne process.
    with ThreadPoolExecutor(1) as sender:
        for start in range(0, count, 50):
            last = min(count, start + 50) - 1
            sender.submit(updates, range(start, last + 1)).result()
            page.wait_for_function(
                f"n => devices.get('panic-007').battery === n || ({stop_when})",
                arg=last,
                timeout=10_000,
            )
            if page.evaluate(f"() => {stop_when}"):
                return


def test_the_dashboard_acknowledges_what_it_reads_so_a_long_stream_never_cuts_it_off(
    daphne_server: int, browser: Any, redis_client: object
):
    acme = create_tenant_with_devices("acme", "panic-007")
    operator(acme, "alice")
    page = signed_in_page(browser, daphne_server, "alice")
    page.evaluate("() => { window.firstSocket = socket; }")
    dropped_before = metric("noc_events_dropped_total", reason="client_behind")

    stream_device_updates(page, acme.pk, stop_when="socket !== window.firstSocket")

    assert page.evaluate("() => socket === window.firstSocket"), "the dashboard reconnected"
    assert metric("noc_events_dropped_total", reason="client_behind") == dropped_before


def test_a_dashboard_cut_off_for_not_acknowledging_reconnects_to_a_fresh_snapshot(
    daphne_server: int, browser: Any, redis_client: object
):
    from apps.alerts.services import AlertSignal, raise_alert
    from apps.devices.models import Device

    acme = create_tenant_with_devices("acme", "panic-007")
    operator(acme, "alice")
    page = signed_in_page(browser, daphne_server, "alice")
    page.evaluate(
        "() => { window.ack = () => {}; window.closeCodes = [];"
        " socket.addEventListener('close', (event) => closeCodes.push(event.code)); }"
    )
    # Stored but never broadcast: only a fresh snapshot can show it.
    device = Device.objects.get(device_id="panic-007")
    signal = AlertSignal(
        device=device, alert_type="PANIC", severity="CRITICAL", seen_at=datetime.now(tz=UTC)
    )
    alert_id = raise_alert(signal).data["id"]
    dropped_before = metric("noc_events_dropped_total", reason="client_behind")

    stream_device_updates(page, acme.pk, stop_when="closeCodes.length > 0")

    page.wait_for_selector(f"#alerts tbody tr[data-alert-id='{alert_id}']", timeout=15_000)
    assert page.evaluate("() => closeCodes") == [4408]
    assert page.locator("#connection.state-open").count() == 1
    assert metric("noc_events_dropped_total", reason="client_behind") > dropped_before


def test_an_operator_sends_a_device_a_command_from_the_dashboard_and_watches_its_states(
    bus: Service, daphne_server: int, browser: Any
):
    operator(create_tenant_with_devices("acme", "door-7"), "alice")
    door = DeviceClient("door-7", environment.MQTT_PORT)
    try:
        page = signed_in_page(browser, daphne_server, "alice")
        page.click("#devices tbody tr:has-text('door-7') button.command_device")
        page.fill("#command-name", "unlock")
        page.fill("#command-params", '{"seconds": 5}')
        page.click("#command-send")
        row = "#commands tbody tr:has-text('unlock')"
        page.wait_for_selector(f"{row}:has-text('SENT')", timeout=15_000)

        [(topic, body)] = door.received()
        door.answer(body["command_id"], "success", "unlocked for 5 s")
        page.wait_for_selector(f"{row}:has-text('SUCCEEDED')", timeout=15_000)
    finally:
        door.close()
    assert topic == "command/door-7/unlock"
    assert body["params"] == {"seconds": 5}
    assert "unlocked for 5 s" in page.inner_text(row)
    assert page.inner_text("#command-result") == "queued"
