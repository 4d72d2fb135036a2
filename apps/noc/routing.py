"""WebSocket routes. The NOC dashboard consumer joins here (see the NOC issue)."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
