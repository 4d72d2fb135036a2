"""ASGI entry point served by Daphne: HTTP goes to Django, WebSockets to Channels consumers.

Both see the client address resolved once, from TRUSTED_PROXIES, by ClientAddressMiddleware;
Daphne runs without --proxy-headers, which would believe the client's own X-Forwarded-For.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs the app registry)

from apps.core.client_address import ClientAddressMiddleware  # noqa: E402
from apps.noc.routing import websocket_urlpatterns  # noqa: E402
from apps.noc.security import origin_checked  # noqa: E402

application = ClientAddressMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            # No session or auth middleware: the consumer reads its credentials from the
            # handshake itself and checks them with the user (a layer less per connection).
            "websocket": origin_checked(URLRouter(websocket_urlpatterns)),
        }
    )
)
