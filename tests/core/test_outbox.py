"""The broadcast outbox: committed events reach the NOC once, even when their sender dies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import transaction

from apps.core import outbox
from apps.core.events import Event, EventType
from apps.core.models import PendingBroadcast
from tests.factories import create_tenant_with_devices
from tests.ledger import Broadcasts
from tests.services import ROOT, metric, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def update(tenant_id: int, messages: int) -> Event:
    return Event(tenant_id, EventType.TELEMETRY_UPDATE, {"devices": [], "messages": messages})


def test_events_sent_after_commit_are_marked_and_then_forgotten_not_resent(redis_client):
    tenant = create_tenant_with_devices("acme")
    with Broadcasts([tenant.pk]) as broadcasts:
        with transaction.atomic():
            outbox.broadcast_on_commit([update(tenant.pk, 3)])
            assert broadcasts.total_telemetry_messages() == 0  # nothing before the commit
        wait_for(lambda: broadcasts.total_telemetry_messages() == 3, timeout=10, what="the event")
        assert outbox.resend(0) == {"resent": 0, "forgotten": 1}
    assert broadcasts.total_telemetry_messages() == 3
    assert not PendingBroadcast.objects.exists()
    assert not redis_client.smembers(outbox.SENT_KEY)


def fail_after_recording(event: Event) -> None:
    with transaction.atomic():
        outbox.broadcast_on_commit([event])
        raise RuntimeError("the batch failed")


def test_events_rolled_back_with_their_effects_are_never_sent(redis_client):
    tenant = create_tenant_with_devices("acme")
    with Broadcasts([tenant.pk]) as broadcasts:
        with pytest.raises(RuntimeError):
            fail_after_recording(update(tenant.pk, 3))
        assert outbox.resend(0) == {"resent": 0, "forgotten": 0}
    assert broadcasts.received == []
    assert not PendingBroadcast.objects.exists()


# A real process commits its effects with events for two tenants, then dies before sending.
DIES_AFTER_COMMIT = """
import os, django
django.setup()
from django.db import transaction
from apps.core import outbox
from apps.core.events import Event, EventType
with transaction.atomic():
    transaction.on_commit(lambda: os._exit(9))  # runs first: the process dies after the commit
    outbox.broadcast_on_commit([
        Event({a}, EventType.TELEMETRY_UPDATE, {{"devices": [], "messages": 5}}),
        Event({b}, EventType.TELEMETRY_UPDATE, {{"devices": [], "messages": 7}}),
    ])
"""


def test_events_of_a_process_that_died_after_its_commit_are_resent_once(redis_client):
    acme = create_tenant_with_devices("acme")
    globex = create_tenant_with_devices("globex")
    resent_before = metric("bus_broadcasts_resent_total")
    with Broadcasts([acme.pk, globex.pk]) as broadcasts:
        code = DIES_AFTER_COMMIT.format(a=acme.pk, b=globex.pk)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "intelliwiz_config.settings"}
        died = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60)
        assert died.returncode == 9
        assert PendingBroadcast.objects.count() == 1  # committed, never sent
        assert outbox.resend(3600) == {"resent": 0, "forgotten": 0}  # too young to resend

        assert outbox.resend(0) == {"resent": 2, "forgotten": 1}
        wait_for(
            lambda: broadcasts.telemetry_messages() == {acme.pk: 5, globex.pk: 7},
            timeout=10,
            what="both events, resent",
        )
        assert outbox.resend(0) == {"resent": 0, "forgotten": 0}
    assert broadcasts.telemetry_messages() == {acme.pk: 5, globex.pk: 7}
    assert metric("bus_broadcasts_resent_total") - resent_before == 2
    assert not PendingBroadcast.objects.exists()


def test_an_event_whose_send_was_not_confirmed_is_resent_alone_and_shown_once(redis_client):
    acme = create_tenant_with_devices("acme")
    globex = create_tenant_with_devices("globex")
    with Broadcasts([acme.pk, globex.pk]) as broadcasts:
        with transaction.atomic():
            outbox.broadcast_on_commit([update(acme.pk, 5), update(globex.pk, 7)])
        wait_for(lambda: broadcasts.total_telemetry_messages() == 12, timeout=10, what="both")
        # Sent, but its mark is missing: as if Redis had died answering the send.
        row = PendingBroadcast.objects.get()
        redis_client.srem(outbox.SENT_KEY, f"{row.pk}:1")
        assert outbox.resend(0) == {"resent": 1, "forgotten": 1}
        # The same id again: a dashboard (here the ledger, as the NOC consumer does) drops it.
        wait_for(lambda: broadcasts.resends_absorbed == 1, timeout=10, what="the resend")
    assert broadcasts.telemetry_messages() == {acme.pk: 5, globex.pk: 7}
    raw_ids = [m.get("id") for _, m in broadcasts.received]
    assert sorted(raw_ids) == [f"{row.pk}:0", f"{row.pk}:1"]


def test_the_recorder_of_broadcasts_leaves_the_process_channel_layer_free(redis_client):
    """channels_redis lets one event loop at a time receive on a layer: the recorder's thread
    listens on a layer of its own, so the health check and the tests' own receives still work."""
    import asyncio

    from channels.layers import get_channel_layer

    tenant = create_tenant_with_devices("acme")

    async def round_trip() -> dict:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "ping"})
        return await asyncio.wait_for(layer.receive(channel), 5)

    with Broadcasts([tenant.pk]) as broadcasts:
        assert asyncio.run(round_trip()) == {"type": "ping"}
        with transaction.atomic():
            outbox.broadcast_on_commit([update(tenant.pk, 2)])
        wait_for(lambda: broadcasts.total_telemetry_messages() == 2, timeout=10, what="the event")
    assert not broadcasts.errors
