"""Daphne, with an access log that shows no secret: `python -m apps.core.daphne_server ARGS`.

Daphne's access log writes each request's path with its query string. The API refuses a token
in a URL, but a client that sends one anyway would leave it in the journal for anyone who reads
logs. This runs Daphne's own command line (same arguments) with an access log that masks the
value of every query parameter whose name suggests a secret, and anything shaped like a JWT,
wherever it stands in the request line.

And a WebSocket lets go of the HTTP request it was upgraded from. Daphne hands the connection to
the WebSocket protocol but leaves Twisted's HTTP channel registered on it, with its idle timer
(12 hours) running: the channel and its request (headers, buffers: a few KiB) lived as long as
the socket, and when the timer fired it closed the socket under the WebSocket.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

import daphne.cli
import daphne.http_protocol
from daphne.access import AccessLogGenerator

MASK = "***"
SECRET_NAME = re.compile(r"token|key|secret|pass|auth|jwt|session|sig|code|credential", re.I)
JWT_SHAPE = re.compile(r"eyJ[\w%-]*\.[\w%-]*\.[\w%-]*")


def redact(request_line: str) -> str:
    """`GET /api/x?token=abc&status=open` -> `GET /api/x?token=***&status=open`."""
    path, question, query = request_line.partition("?")
    if question:
        pairs = []
        for pair in query.split("&"):
            name, equals, _value = pair.partition("=")
            pairs.append(
                f"{name}={MASK}" if equals and SECRET_NAME.search(unquote_plus(name)) else pair
            )
        request_line = f"{path}?{'&'.join(pairs)}"
    return JWT_SHAPE.sub(MASK, request_line)


class RedactingAccessLog(AccessLogGenerator):  # type: ignore[misc]
    def write_entry(self, host: str, date: Any, request: str, *args: Any, **kwargs: Any) -> None:
        super().write_entry(host, date, redact(request), *args, **kwargs)


class UpgradeReleasingRequest(daphne.http_protocol.WebRequest):  # type: ignore[misc]
    def process(self) -> None:
        channel = self.channel
        super().process()
        if self.transport is None and channel is not None and channel.transport is not None:
            # Upgraded: the WebSocket protocol owns the connection now (Daphne took the
            # transport from this request). Stop the channel's idle timer and its hold on the
            # connection as its producer, so both it and this request are freed.
            channel.setTimeout(None)
            channel.transport.unregisterProducer()


def main() -> None:
    daphne.cli.AccessLogGenerator = RedactingAccessLog  # what CommandLineInterface.run builds
    daphne.http_protocol.WebRequest = UpgradeReleasingRequest  # what HTTPFactory builds
    daphne.cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
