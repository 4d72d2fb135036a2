"""WebSocket routes."""

from __future__ import annotations

from typing import Any

from django.urls import path

from apps.noc.consumers import NocDashboardConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/noc/dashboard/", NocDashboardConsumer.as_asgi()),
]
