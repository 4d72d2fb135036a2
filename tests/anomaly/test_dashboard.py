"""The NOC page in a real browser shows a training run's progress and the anomaly it then finds."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from apps.anomaly.tasks import broadcast_progress
from apps.anomaly.training import train
from apps.devices.models import Device
from tests import environment
from tests.anomaly.data import normal, store
from tests.factories import create_tenant_with_devices, operator, telemetry

# The NOC's browser fixture (Debian's chromium), re-exported so pytest finds it here.
from tests.noc.test_dashboard_browser import browser as browser
from tests.noc.test_dashboard_browser import signed_in_page
from tests.services import Service, mqtt_publish

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_dashboard_shows_training_progress_then_the_anomaly_alert(
    bus: Service, daphne_server: int, browser: Any
):
    acme = create_tenant_with_devices("acme", "sensor-a1", "sensor-a2")
    store(list(Device.objects.filter(tenant=acme)), normal(np.random.default_rng(5), 600))
    operator(acme, "alice")
    page = signed_in_page(browser, daphne_server, "alice")

    train([acme], report=broadcast_progress)
    page.wait_for_selector("#training:has-text('sensor model 3/3 trained')", timeout=10_000)

    # The worker loads the model within ANOMALY_MODEL_CHECK_SECONDS; resend until it has.
    row = "#alerts tbody tr:has-text('ANOMALY')"
    deadline = time.monotonic() + 20
    for attempt in range(1, 100):
        hot = telemetry(battery=80, signal=-64, temperature=85, msg_id=f"hot-{attempt}")
        mqtt_publish(environment.MQTT_PORT, [("device/sensor-a1/telemetry", hot)])
        if page.locator(row).count() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(1000)  # the browser's own clock: one publish a second
    page.wait_for_selector(row, timeout=5_000)
    text = page.inner_text(row)
    assert "sensor-a1" in text
    assert "HIGH" in text
    assert "deviations from normal" in text
