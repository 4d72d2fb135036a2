"""Origin checking for the NOC WebSocket.

A browser always sends an Origin header, and it must name one of DJANGO_ALLOWED_HOSTS (this
stops other sites from riding a logged-in operator's session). Scripts and `wscat` send none;
they are let through here and must then authenticate with a bearer token, since the consumer
refuses a session without an Origin.
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import OriginValidator
from django.conf import settings


class BrowserOriginValidator(OriginValidator):  # type: ignore[misc]
    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def origin_checked(application: Any) -> BrowserOriginValidator:
    return BrowserOriginValidator(application, settings.ALLOWED_HOSTS)
