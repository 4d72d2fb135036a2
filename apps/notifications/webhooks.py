"""Signed webhook deliveries (the receiver's side is in docs/notifications.md).

Each POST carries a JSON body and
    X-IntelliWiz-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    X-IntelliWiz-Delivery:  <delivery id, the same on every retry of one delivery>
A receiver recomputes v1 over the raw body, refuses a `t` older than its tolerance (5 minutes
suggested) and a delivery id it has already seen: a captured request cannot be replayed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

SIGNATURE_HEADER = "X-IntelliWiz-Signature"
DELIVERY_HEADER = "X-IntelliWiz-Delivery"
EVENT_HEADER = "X-IntelliWiz-Event"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def endpoint(url: str) -> str:
    """What logs and people are shown of a webhook URL: scheme://host:port, never its
    credentials, path or query (which may hold a token)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def breaker_service(url: str) -> str:
    """The circuit breaker of one endpoint (`circuit_breaker:webhook:<hash>` in Redis)."""
    return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx is the receiver's answer, not an address to post the alert to


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (timeout, refused, unreachable)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def endpoint_failed(self) -> bool:
        """No answer or a server error: counts against the breaker and is retried. A 4xx other
        than 408 and 429 is the receiver refusing this delivery: not retried."""
        return self.status is None or self.status >= 500 or self.status in {408, 429}


def post(
    url: str, secret: str, body: bytes, delivery_id: str, event: str, timeout: float
) -> Answer:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        return Answer(None, f"unsupported scheme {parts.scheme!r}")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "intelliwiz-notifications/1",
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }
    if parts.username is not None:  # user:password@host: sent as Basic auth, not in the URL
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        netloc += f":{parts.port}" if parts.port else ""
        url = urlunsplit(parts._replace(netloc=netloc))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(int(response.status))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, f"HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Answer(None, f"{type(reason).__name__}: {reason}"[:500])
