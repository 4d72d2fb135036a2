"""Daphne, with an access log that shows no secret: `python -m apps.core.daphne_server ARGS`.

Daphne's access log writes each request's path with its query string. The API refuses a token
in a URL, but a client that sends one anyway would leave it in the journal for anyone who reads
logs. This runs Daphne's own command line (same arguments) with an access log that masks the
value of every query parameter whose name suggests a secret, and anything shaped like a JWT,
wherever it stands in the request line.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

import daphne.cli
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


def main() -> None:
    daphne.cli.AccessLogGenerator = RedactingAccessLog  # what CommandLineInterface.run builds
    daphne.cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
