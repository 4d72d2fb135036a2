"""Hooks on the Celery app (apps/monitoring/celery_hooks.py) that a worker's tasks rely on."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from apps.core.envelope import Envelope
from apps.devices.models import TelemetryReading
from apps.mqtt.tasks import PROCESSING_TASKS
from tests.factories import create_tenant_with_devices, telemetry


@pytest.mark.django_db
def test_a_debug_worker_keeps_no_query_log_after_a_task(settings, redis_client):
    settings.DEBUG = True  # as under `make run`: Django logs every query it runs
    create_tenant_with_devices("acme", "sensor-001")
    topic = "device/sensor-001/telemetry"
    message = Envelope(
        key=f"{topic}#hooks-1",
        topic=topic,
        source_id="sensor-001",
        kind="telemetry",
        payload=json.loads(telemetry()),
        received_at=0.0,
    ).to_message()
    connection.queries_log.clear()

    result = PROCESSING_TASKS["telemetry"].apply(args=[[message]])

    assert result.successful(), result.result
    logged = len(connection.queries)  # read before the check below logs its own query
    assert TelemetryReading.objects.filter(idempotency_key=f"{topic}#hooks-1").exists()
    assert logged == 0
