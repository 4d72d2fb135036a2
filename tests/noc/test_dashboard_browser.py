"""The NOC page in a real browser (Debian's Chromium driven by Playwright) on a real stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests import environment
from tests.factories import OPERATOR_PASSWORD, create_tenant_with_devices, operator, panic
from tests.services import Service, mqtt_publish

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
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def signed_in_page(browser: Any, port: int, username: str) -> Any:
    page = browser.new_context().new_page()
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
    assert "NEW" in carol.inner_text(row)

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
