"""Secrets sent to the live Daphne reach no log: a password, the tokens it is exchanged for and a
canary token, over REST and the NOC WebSocket.

The session's canary scan (tests/canary.py) reads every log at the end of the run; this test also
reads Daphne's log at once, so a leak it causes names it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from apps.tenants.models import Tenant
from tests import environment
from tests.canary import scan_text
from tests.factories import OPERATOR_PASSWORD, operator

pytestmark = pytest.mark.django_db(transaction=True)


def call(url: str, *, token: str = "", body: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 (the test's own Daphne)
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


async def first_frame(url: str, token: str = "") -> str:
    """The type of the server's first message, or how it closed the connection."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with connect(url, additional_headers=headers) as ws:
        try:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])
        except ConnectionClosed as closed:
            return f"closed {closed.rcvd.code if closed.rcvd else None}"


def test_a_password_and_tokens_sent_over_rest_and_websocket_reach_no_log(
    redis_client: object, daphne_server: int, scratch_dir: Path
):
    operator(Tenant.objects.create(name="acme"), "acme-op")
    api = f"http://127.0.0.1:{daphne_server}/api"
    socket = f"ws://127.0.0.1:{daphne_server}/ws/noc/dashboard/"
    canary_token = environment.canary("token")

    login = {"username": "acme-op", "password": OPERATOR_PASSWORD}
    status, pair = call(f"{api}/token/", body=login)
    assert status == 200
    wrong = {"username": "acme-op", "password": environment.canary("wrongpassword")}
    assert call(f"{api}/token/", body=wrong)[0] == 401
    assert call(f"{api}/alerts/", token=pair["access"])[0] == 200
    assert call(f"{api}/alerts/", token=canary_token)[0] == 401
    assert call(f"{api}/token/refresh/", body={"refresh": pair["refresh"]})[0] == 200
    assert call(f"{api}/token/refresh/", body={"refresh": canary_token})[0] == 401

    assert asyncio.run(first_frame(socket, pair["access"])) == "connected"
    assert asyncio.run(first_frame(socket, canary_token)) == "closed 4401"
    assert asyncio.run(first_frame(f"{socket}?token={pair['access']}")) == "closed 4401"

    log = scratch_dir / "log" / "daphne.log"
    leaks = list(
        scan_text(str(log), log.read_bytes(), environment.CANARIES, environment.CANARY_MARK)
    )
    assert not leaks, "\n".join(map(str, leaks))
