"""The event vocabulary (apps/core/events.py) and the NOC consumer's handlers agree."""

from __future__ import annotations

import inspect

import pytest

from apps.core.events import EventType, broadcast_to_noc_dashboard
from apps.noc.consumers import NocDashboardConsumer


@pytest.mark.parametrize("event_type", list(EventType), ids=str)
def test_the_noc_consumer_has_a_handler_named_after_each_event_type(event_type: EventType):
    handler = getattr(NocDashboardConsumer, event_type.value, None)
    assert inspect.iscoroutinefunction(handler), (
        f"NocDashboardConsumer needs `async def {event_type.value}(self, event)`: the channel "
        "layer delivers each event to the handler named after its type"
    )


def test_an_event_type_outside_the_vocabulary_is_refused_before_sending():
    with pytest.raises(ValueError, match="'alert_created' is not a valid EventType"):
        broadcast_to_noc_dashboard("alert_created", {}, tenant_id=1)
