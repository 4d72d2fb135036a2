"""The client's address: resolved once per connection, HTTP and WebSocket alike.

Login throttling and lockout, the admin's allowed networks and the logs all use the address this
module puts in the ASGI scope's `client` (Django then sees it as REMOTE_ADDR; read it with
`client_address(request)`). It is the peer's address, unless the peer is one of
TRUSTED_PROXIES: then it is the right-most X-Forwarded-For entry that is not itself a trusted
proxy. Entries left of that one were written by the client and are ignored, so a forged
`X-Forwarded-For: 127.0.0.1, …` changes nothing. X-Forwarded-Proto likewise sets the scheme
only when a trusted proxy sends it.

Forwarding headers are removed from the scope either way, so no code further in (DRF's throttle,
a library) can read a forged one. A request that carried them from a peer that is not trusted
was relayed by a proxy nobody vouched for: it is marked, and the admin refuses it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import structlog
from django.conf import settings
from django.http import HttpRequest

log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDING_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
    | {b"x-real-ip", b"forwarded"}
)
# Set in the scope when forwarding headers came from a peer that is not a trusted proxy.
UNTRUSTED_RELAY = "intelliwiz.untrusted_relay"
# Such peers are named in the log once each, and no more than this many per process.
WARN_AT_MOST_PEERS = 16


def parse_address(text: str) -> Address | None:
    """An address as a proxy writes it (`203.0.113.7`, `[2001:db8::1]`, `203.0.113.7:5123`)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=8)
def networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """Parsed TRUSTED_PROXIES / ADMIN_ALLOWED_NETWORKS (settings.py has validated them)."""
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def in_networks(address: str | Address | None, within: Iterable[str]) -> bool:
    parsed = parse_address(address) if isinstance(address, str) else address
    return parsed is not None and any(parsed in network for network in networks(tuple(within)))


def resolve(peer: str, forwarded_for: list[str], trusted: Iterable[str]) -> str:
    """The client: the peer, or the right-most forwarded address that is not a trusted proxy.

    `forwarded_for` holds the X-Forwarded-For values in the order they arrived. An entry that
    is not an address ends the walk: the last trusted hop is then the best we know.
    """
    trusted = tuple(trusted)
    client = parse_address(peer)
    if client is None or not in_networks(client, trusted):
        return peer
    entries = [entry for value in forwarded_for for entry in value.split(",") if entry.strip()]
    for entry in reversed(entries):
        hop = parse_address(entry)
        if hop is None:
            break
        client = hop
        if not in_networks(hop, trusted):
            break
    return str(client)


class ClientAddressMiddleware:
    """ASGI middleware around the whole application: the one place the client is resolved."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._warned: set[str] = set()  # peers already named in the log (a few at most)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        peer = scope["client"][0] if scope.get("client") else ""
        forwarded = [(n.lower(), v) for n, v in scope["headers"] if n.lower() in FORWARDING_HEADERS]
        scope = {
            **scope,
            "headers": [(n, v) for n, v in scope["headers"] if n.lower() not in FORWARDING_HEADERS],
        }
        if forwarded and in_networks(peer, settings.TRUSTED_PROXIES):
            values = [v.decode("latin-1") for n, v in forwarded if n == b"x-forwarded-for"]
            scope["client"] = (resolve(peer, values, settings.TRUSTED_PROXIES), 0)
            protos = [v.decode("latin-1") for n, v in forwarded if n == b"x-forwarded-proto"]
            if protos:
                secure = protos[-1].split(",")[-1].strip().lower() in ("https", "wss")
                plain, tls = ("ws", "wss") if scope["type"] == "websocket" else ("http", "https")
                scope["scheme"] = tls if secure else plain
        elif forwarded:
            scope[UNTRUSTED_RELAY] = True
            if peer not in self._warned and len(self._warned) < WARN_AT_MOST_PEERS:
                self._warned.add(peer)
                log.warning(
                    "forwarding headers from an untrusted peer ignored",
                    peer=peer,
                    hint="if a proxy runs there, add its address to TRUSTED_PROXIES; until "
                    "then every client behind it counts as that one address",
                )
        return await self.app(scope, receive, send)


def client_address(request: HttpRequest) -> str:
    """The client of this request, as resolved above (also AXES_CLIENT_IP_CALLABLE)."""
    return str(request.META.get("REMOTE_ADDR") or "")


def relayed_by_untrusted_proxy(request: HttpRequest) -> bool:
    return bool(getattr(request, "scope", {}).get(UNTRUSTED_RELAY))
