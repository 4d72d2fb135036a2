from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.alerts.models import Alert, AlertStatus
from apps.alerts.services import AlertSignal, TransitionError, raise_alert, transition
from apps.devices.models import Device
from apps.tenants.models import User
from tests.factories import create_tenant_with_devices

pytestmark = pytest.mark.django_db


@pytest.fixture
def device() -> Device:
    create_tenant_with_devices("acme", "panic-007")
    return Device.objects.get(device_id="panic-007")


def panic_signal(device: Device) -> AlertSignal:
    return AlertSignal(
        device=device, alert_type="PANIC", severity="CRITICAL", seen_at=timezone.now()
    )


def test_a_new_critical_alert_is_announced_as_critical_alert_and_a_repeat_as_an_update(device):
    first = raise_alert(panic_signal(device))
    again = raise_alert(panic_signal(device))
    assert first.message_type == "critical_alert"
    assert again.message_type == "alert_updated"
    assert again.data["count"] == 2
    assert first.tenant_id == device.tenant_id
    assert Alert.objects.count() == 1


def test_each_transition_is_recorded_with_who_and_when(device):
    operator = User.objects.create(username="op", tenant=device.tenant)
    raise_alert(panic_signal(device))
    alert = Alert.objects.get()
    transition(alert, AlertStatus.ACKNOWLEDGED, by=operator)
    transition(alert, AlertStatus.IN_PROGRESS, by=operator, note="guard dispatched")
    transition(alert, AlertStatus.RESOLVED, by=operator)
    steps = list(alert.transitions.values_list("from_status", "to_status", "by__username", "note"))
    assert steps == [
        ("NEW", "ACKNOWLEDGED", "op", ""),
        ("ACKNOWLEDGED", "IN_PROGRESS", "op", "guard dispatched"),
        ("IN_PROGRESS", "RESOLVED", "op", ""),
    ]
    assert alert.resolved_at is not None
    assert all(step.at is not None for step in alert.transitions.all())


def test_a_closed_alert_cannot_be_reopened_and_a_new_one_starts_instead(device):
    raise_alert(panic_signal(device))
    alert = Alert.objects.get()
    transition(alert, AlertStatus.FALSE_ALARM, by=None)
    with pytest.raises(TransitionError, match="FALSE_ALARM cannot become ACKNOWLEDGED"):
        transition(alert, AlertStatus.ACKNOWLEDGED, by=None)
    event = raise_alert(panic_signal(device))
    assert event.message_type == "critical_alert"
    assert Alert.objects.count() == 2


def test_the_database_refuses_a_second_active_alert_for_the_same_source_and_type(device):
    raise_alert(panic_signal(device))
    existing = Alert.objects.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(
            tenant=existing.tenant,
            source_id=existing.source_id,
            alert_type="PANIC",
            severity="CRITICAL",
            first_seen=existing.first_seen,
            last_seen=existing.last_seen,
        )


def test_a_repeat_at_a_higher_severity_escalates_the_alert_and_announces_it(device):
    first = raise_alert(
        AlertSignal(device=device, alert_type="PANIC", severity="HIGH", seen_at=timezone.now())
    )
    escalated = raise_alert(panic_signal(device))
    calmer = raise_alert(
        AlertSignal(device=device, alert_type="PANIC", severity="LOW", seen_at=timezone.now())
    )
    assert first.message_type == "alert_updated"
    assert escalated.message_type == "critical_alert"
    assert escalated.data["severity"] == "CRITICAL"
    assert calmer.data["severity"] == "CRITICAL"
    assert Alert.objects.get().count == 3
