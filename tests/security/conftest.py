"""A real Daphne behind a pretend reverse proxy, and an HTTP client that picks its own address.

Loopback is all of 127.0.0.0/8, so one machine can play several hosts: the Daphne started here
trusts 127.0.0.2 as its proxy, serves the admin to 127.0.0.3 only, and locks logins out after
three failures. A request sent from 127.0.0.1 is a client connecting directly.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import start_daphne
from tests.services import Service

PROXY = "127.0.0.2"
ADMIN_HOST = "127.0.0.3"
DIRECT = "127.0.0.1"
LIMIT = 3


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: str


@dataclass(frozen=True)
class Daphne:
    port: int

    def request(
        self,
        method: str,
        path: str,
        *,
        source: str = DIRECT,
        forwarded_for: str | None = None,
        json_body: dict[str, str] | None = None,
    ) -> Answer:
        """One request from the address `source`, optionally with an X-Forwarded-For header."""
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0)
        )
        headers = {"Content-Type": "application/json"} if json_body is not None else {}
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        body = json.dumps(json_body) if json_body is not None else None
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read().decode())
        finally:
            connection.close()

    def token(self, username: str, password: str, **kwargs: str) -> Answer:
        body = {"username": username, "password": password}
        return self.request("POST", "/api/token/", json_body=body, **kwargs)


@pytest.fixture(scope="session")
def proxied_daphne(
    redis_server: Service, scratch_dir: Path, django_db_setup: None
) -> Iterator[Daphne]:
    service, port = start_daphne(
        scratch_dir / "log" / "daphne-proxied.log",
        TRUSTED_PROXIES=PROXY,
        ADMIN_ALLOWED_NETWORKS=ADMIN_HOST,
        LOGIN_FAILURE_LIMIT=str(LIMIT),
    )
    yield Daphne(port)
    service.stop()
