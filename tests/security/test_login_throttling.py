"""Password guessing (issue 10, hole 2): every login path locks out per account and per client
address, the address cannot be forged, and weak passwords are refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from io import StringIO
from typing import Any
from urllib.parse import urlencode

import pytest
from axes.models import AccessAttempt
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client

from apps.core.client_address import ClientAddressMiddleware, resolve
from apps.tenants.models import Tenant, User
from tests.security.conftest import LIMIT, PROXY, Daphne

PASSWORD = "canary-Pa55phrase-9f3e"  # must never appear in a log line
TOKEN, ACCOUNTS, ADMIN = "/api/token/", "/accounts/login/", "/admin/login/"
LOGIN_PATHS = [TOKEN, ACCOUNTS, ADMIN]
# What a wrong password and a right one get on each path (a login form redisplays itself).
FAILED = {TOKEN: 401, ACCOUNTS: 200, ADMIN: 200}
SUCCEEDED = {TOKEN: 200, ACCOUNTS: 302, ADMIN: 302}


def superuser(username: str) -> User:
    """An account that may log in on every path, the admin included."""
    tenant, _ = Tenant.objects.get_or_create(name="acme")
    return User.objects.create_superuser(username=username, password=PASSWORD, tenant=tenant)


# --- Each login path, through Django (the lockout itself) ---------------------------------------


@pytest.fixture
def small_limit(settings: Any, redis_server: object) -> Iterator[None]:
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.ADMIN_ALLOWED_NETWORKS = ["10.0.0.0/8"]  # the addresses these tests log in from
    # A fast hasher: these tests check dozens of passwords (the Daphne ones use the real one).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # the per-address rate of /api/token/ lives in the cache
    yield
    cache.clear()


def attempt(path: str, username: str, password: str, address: str) -> Any:
    # A plain form, as a browser's login page posts it (the API takes no multipart bodies).
    form = urlencode({"username": username, "password": password, "next": "/"})
    return Client().post(
        path, form, content_type="application/x-www-form-urlencoded", REMOTE_ADDR=address
    )


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
@pytest.mark.parametrize("path", LOGIN_PATHS)
def test_an_account_is_locked_out_after_the_limit_of_failures_from_any_addresses(path: str):
    superuser("victim")
    superuser("bystander")
    codes = [attempt(path, "victim", "wrong", f"10.0.0.{n}").status_code for n in range(LIMIT)]
    assert codes == [FAILED[path]] * (LIMIT - 1) + [429]

    locked = attempt(path, "victim", PASSWORD, "10.0.1.1")  # right password, fresh address
    assert locked.status_code == 429
    assert "try again in 15 minutes" in locked.content.decode()
    assert locked["Retry-After"] == "900"
    assert attempt(path, "bystander", PASSWORD, "10.0.0.1").status_code == SUCCEEDED[path]


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
@pytest.mark.parametrize("path", LOGIN_PATHS)
def test_an_address_is_locked_out_after_the_limit_of_failures_for_any_accounts(path: str):
    superuser("victim")
    codes = [attempt(path, f"guess-{n}", "wrong", "10.0.2.1").status_code for n in range(LIMIT)]
    assert codes == [FAILED[path]] * (LIMIT - 1) + [429]

    assert attempt(path, "victim", PASSWORD, "10.0.2.1").status_code == 429
    assert attempt(path, "victim", PASSWORD, "10.0.2.2").status_code == SUCCEEDED[path]


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
def test_a_lockout_is_logged_with_account_and_address_but_never_the_password(
    caplog: pytest.LogCaptureFixture,
):
    superuser("victim")
    with caplog.at_level(logging.INFO):
        for n in range(LIMIT):
            attempt(ACCOUNTS, "victim", f"{PASSWORD}-{n}", f"10.0.3.{n}")
        attempt(ACCOUNTS, "victim", PASSWORD, "10.0.3.9")

    lockouts = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    lockouts = [event for event in lockouts if event.get("event") == "login locked out"]
    assert len(lockouts) == 1, "one line for the lockout, none for attempts refused after it"
    assert lockouts[0]["username"] == "victim"
    assert lockouts[0]["client"] == "10.0.3.2"
    assert PASSWORD not in caplog.text


@pytest.mark.django_db
@pytest.mark.usefixtures("small_limit")
def test_a_username_longer_than_any_account_is_a_400_not_a_failure_on_record():
    answer = attempt(TOKEN, "x" * 151, "wrong", "10.0.4.1")
    assert answer.status_code == 400
    assert "no more than 150 characters" in answer.content.decode()
    assert not AccessAttempt.objects.exists()


# --- Through the real Daphne: the client address cannot be forged ------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("redis_client")
def test_a_forged_x_forwarded_for_does_not_escape_the_lockout_without_a_trusted_proxy(
    proxied_daphne: Daphne,
):
    superuser("victim")
    # A client connecting directly claims a new address with each guess, at a new account.
    codes = [
        proxied_daphne.token(f"guess-{n}", "wrong", forwarded_for=f"198.51.100.{n}").status
        for n in range(LIMIT)
    ]
    assert codes == [401] * (LIMIT - 1) + [429]
    locked = proxied_daphne.token("victim", PASSWORD, forwarded_for="198.51.100.200")
    assert locked.status == 429
    assert locked.headers["Retry-After"] == "900"
    assert "try again in 15 minutes" in locked.body


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("redis_client")
def test_behind_a_trusted_proxy_the_client_it_saw_is_locked_out_and_a_forged_entry_is_ignored(
    proxied_daphne: Daphne,
):
    superuser("victim")
    # The proxy appends the address it saw (203.0.113.7); the client forged what is left of it.
    codes = [
        proxied_daphne.token(
            f"guess-{n}", "wrong", source=PROXY, forwarded_for=f"10.9.9.{n}, 203.0.113.7"
        ).status
        for n in range(LIMIT)
    ]
    assert codes == [401] * (LIMIT - 1) + [429]
    forged = "203.0.113.8, 203.0.113.7"  # pretending to be another of the proxy's clients
    locked = proxied_daphne.token("victim", PASSWORD, source=PROXY, forwarded_for=forged)
    assert locked.status == 429
    # The proxy's other clients, and the proxy itself, are not locked out.
    other = proxied_daphne.token("victim", PASSWORD, source=PROXY, forwarded_for="203.0.113.8")
    assert other.status == 200, other.body
    assert proxied_daphne.token("victim", PASSWORD, source=PROXY).status == 200


# --- The resolution itself, and the WebSocket scope --------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("192.0.2.1", ["203.0.113.7"], "192.0.2.1"),  # peer not trusted: header ignored
        ("10.0.0.2", [], "10.0.0.2"),  # trusted, nothing forwarded
        ("10.0.0.2", ["1.1.1.1, 203.0.113.7"], "203.0.113.7"),  # right-most untrusted entry
        ("10.0.0.2", ["1.1.1.1", "203.0.113.7, 10.0.0.3"], "203.0.113.7"),  # two headers, 2 hops
        ("10.0.0.2", ["10.0.0.4, 10.0.0.3"], "10.0.0.4"),  # all trusted: the farthest
        ("10.0.0.2", ["junk, 203.0.113.7:5123"], "203.0.113.7"),  # a port is dropped
        ("10.0.0.2", ["203.0.113.7, junk"], "10.0.0.2"),  # the proxy wrote junk: itself
        ("10.0.0.2", ["[2001:db8::7]"], "2001:db8::7"),
        ("::ffff:10.0.0.2", ["203.0.113.7"], "203.0.113.7"),  # IPv4-mapped peer
    ],
)
def test_the_client_is_the_right_most_forwarded_address_that_is_not_a_trusted_proxy(
    peer: str, forwarded_for: list[str], client: str
):
    assert resolve(peer, forwarded_for, ["10.0.0.0/24"]) == client


@pytest.mark.parametrize(
    ("peer", "client", "scheme", "untrusted_relay"),
    [("10.0.0.2", "203.0.113.7", "wss", False), ("192.0.2.1", "192.0.2.1", "ws", True)],
)
def test_a_websocket_sees_the_same_client_and_no_forwarding_header(
    settings: Any, peer: str, client: str, scheme: str, untrusted_relay: bool
):
    settings.TRUSTED_PROXIES = ["10.0.0.2/32"]
    seen: dict[str, Any] = {}

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    scope = {
        "type": "websocket",
        "scheme": "ws",
        "client": (peer, 40000),
        "headers": [
            (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"),
            (b"x-forwarded-proto", b"https"),
            (b"origin", b"http://localhost"),
        ],
    }
    asyncio.run(ClientAddressMiddleware(application)(scope, None, None))
    assert seen["client"][0] == client
    assert seen["scheme"] == scheme
    assert seen["headers"] == [(b"origin", b"http://localhost")]
    assert bool(seen.get("intelliwiz.untrusted_relay")) is untrusted_relay


# --- Password validation --------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("Sh0rt-pass", "too short. It must contain at least 12 characters"),
        ("password1234", "too common"),
        ("740193528460", "entirely numeric"),
        ("night-operator-7", "too similar to the username"),
    ],
)
def test_create_operator_refuses_a_weak_password_naming_the_rule(
    monkeypatch: pytest.MonkeyPatch, password: str, rule: str
):
    Tenant.objects.create(name="acme")
    monkeypatch.setenv("OP_PASSWORD", password)
    with pytest.raises(CommandError, match=f"password refused: .*{rule}"):
        call_command(
            "create_operator", "--tenant", "acme", "--username", "night-operator",
            "--password-env", "OP_PASSWORD", stdout=StringIO(),
        )  # fmt: skip
    assert not User.objects.filter(username="night-operator").exists()
