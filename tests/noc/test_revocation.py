"""Access ends on open connections too: logout, deactivation, lost permissions, used tokens.

On a real Daphne and Redis channel layer. The shared Daphne re-checks each connection only every
60 s (NOC_REAUTH_SECONDS), so a socket it closes within a second was closed by the revocation
message; the changes that bypass Django's signals are tried on a Daphne re-checking every second.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group, Permission
from django.contrib.sessions.models import Session
from django.test import Client
from rest_framework.test import APIClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from apps.noc.auth import NOC_PERMISSION, issue_access_token, issue_refresh_token
from apps.noc.operators import grant_operator_permissions
from apps.tenants.models import Tenant, User
from tests.conftest import start_daphne
from tests.noc.test_websocket import bearer, next_message, until_type, url

pytestmark = pytest.mark.django_db(transaction=True)

REVOKED = 4410


def noc_user(tenant: Tenant | None, username: str, *, permissions: bool = True) -> User:
    """An operator without a usable password: hashing one costs half a second, and sessions are
    made with force_login, tokens issued directly."""
    user = User.objects.create_user(username=username, tenant=tenant)
    if permissions:
        grant_operator_permissions(user)
    return user


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return str(client.cookies["sessionid"].value)


def session_headers(port: int, sessionid: str) -> dict[str, Any]:
    """What a signed-in browser sends: the session cookie and its page's Origin."""
    return {
        "additional_headers": {"Cookie": f"sessionid={sessionid}"},
        "origin": f"http://127.0.0.1:{port}",
    }


async def opened(port: int, **options: Any) -> ClientConnection:
    ws = await connect(url(port), **options)
    assert (await next_message(ws))["type"] == "connected"
    await until_type(ws, "snapshot")
    return ws


async def closed_with(ws: ClientConnection, timeout: float) -> tuple[int | None, str, float]:
    """Read until the server closes: its close code, the last error it sent, the time it took.

    The code is None if the server did not close the connection within `timeout`.
    """
    started = time.monotonic()
    last_error = ""
    try:
        while True:
            message = await next_message(ws, max(0.01, timeout - (time.monotonic() - started)))
            if message["type"] == "error":
                last_error = message["error"]
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), last_error, time.monotonic() - started
    except TimeoutError:
        await ws.close()
        return None, last_error, time.monotonic() - started


async def still_open(ws: ClientConnection) -> bool:
    await ws.send('{"type": "heartbeat"}')
    try:
        await until_type(ws, "heartbeat_ack", timeout=5)
    except ConnectionClosed:
        return False
    return True


@pytest.fixture
def acme(redis_client: object) -> Tenant:
    return Tenant.objects.create(name="acme")


# --- Revocation messages: at once, whoever made the change -----------------------------------


def sign_out_over_http(port: int, sessionid: str) -> int:
    """The dashboard's Sign out button: POST /accounts/logout/ with the page's CSRF token."""
    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    browser.addheaders = [("Cookie", f"sessionid={sessionid}")]
    browser.open(f"http://127.0.0.1:{port}/noc/", timeout=5).read()
    csrf = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
    assert csrf is not None
    browser.addheaders = [("Cookie", f"sessionid={sessionid}; csrftoken={csrf}")]
    form = urlencode({"csrfmiddlewaretoken": csrf}).encode()
    with browser.open(f"http://127.0.0.1:{port}/accounts/logout/", data=form, timeout=5) as page:
        return int(page.status)


def test_signing_out_closes_the_dashboards_socket_within_a_second(daphne_server, acme):
    sessionid = session_cookie(noc_user(acme, "alice"))

    async def scenario() -> tuple[int | None, str, float]:
        ws = await opened(daphne_server, **session_headers(daphne_server, sessionid))
        assert await asyncio.to_thread(sign_out_over_http, daphne_server, sessionid) == 200
        return await closed_with(ws, timeout=5)

    code, error, seconds = asyncio.run(scenario())
    assert (code, error) == (REVOKED, "access withdrawn: logged out")
    assert seconds < 1.0
    assert not Session.objects.filter(pk=sessionid).exists()


def noc_group(name: str) -> Group:
    group = Group.objects.create(name=name)
    group.permissions.add(Permission.objects.get(codename="view_noc_dashboard"))
    return group


def deactivate(user: User) -> str:
    user.is_active = False
    user.save()
    return "deactivated"


def remove_the_permission(user: User) -> str:
    user.user_permissions.remove(Permission.objects.get(codename="view_noc_dashboard"))
    return "permissions or groups removed"


def clear_the_permissions(user: User) -> str:
    user.user_permissions.clear()
    return "permissions or groups removed"


def take_the_permission_from_them(user: User) -> str:
    Permission.objects.get(codename="view_noc_dashboard").user_set.remove(user)
    return "permissions or groups removed"


def take_the_permission_from_everyone(user: User) -> str:
    Permission.objects.get(codename="view_noc_dashboard").user_set.clear()
    return "permissions or groups removed"


def remove_the_group(user: User) -> str:
    user.groups.remove(Group.objects.get(name="operators"))
    return "permissions or groups removed"


def take_the_permission_from_the_group(user: User) -> str:
    Group.objects.get(name="operators").permissions.clear()
    return "a group's permissions removed"


def delete_the_group(user: User) -> str:
    Group.objects.get(name="operators").delete()
    return "a group of theirs deleted"


def change_the_password(user: User) -> str:
    user.set_unusable_password()  # a new hash as set_password makes, without its half second
    user.save()
    return "password changed"


def move_to_another_tenant(user: User) -> str:
    user.tenant = Tenant.objects.create(name="globex")
    user.save()
    return "moved to another tenant"


def delete_the_user(user: User) -> str:
    user.delete()
    return "deleted"


@pytest.mark.parametrize(
    ("change", "through_group"),
    [
        (deactivate, False),
        (remove_the_permission, False),
        (clear_the_permissions, False),
        (take_the_permission_from_them, False),
        (take_the_permission_from_everyone, False),
        (remove_the_group, True),
        (take_the_permission_from_the_group, True),
        (delete_the_group, True),
        (change_the_password, False),
        (move_to_another_tenant, False),
        (delete_the_user, False),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_a_change_to_a_users_access_closes_their_session_and_token_sockets_within_a_second(
    daphne_server, acme, change: Callable[[User], str], through_group: bool
):
    user = noc_user(acme, "alice", permissions=not through_group)
    if through_group:
        user.groups.add(noc_group("operators"))
    # A colleague with access through a group of her own: nothing done to alice touches her.
    colleague = noc_user(acme, "carol", permissions=False)
    colleague.groups.add(noc_group("watchers"))
    sessionid, token = session_cookie(user), issue_access_token(user)
    colleague_token = issue_access_token(colleague)

    def changes_that_close_nothing() -> None:
        """Had any of these closed the sockets, they would close with its reason, not change's."""
        user.last_login = user.date_joined
        user.save(update_fields=["last_login"])
        user.first_name = "Alice"
        user.save()
        user.user_permissions.add(Permission.objects.get(codename="add_alert"))

    async def scenario() -> tuple[str, list[tuple[int | None, str, float]], bool]:
        by_session = await opened(daphne_server, **session_headers(daphne_server, sessionid))
        by_token = await opened(daphne_server, additional_headers=bearer(token))
        bystander = await opened(daphne_server, additional_headers=bearer(colleague_token))
        await asyncio.to_thread(changes_that_close_nothing)
        reason = await asyncio.to_thread(change, user)
        closes = [await closed_with(ws, timeout=5) for ws in (by_session, by_token)]
        untouched = await still_open(bystander)
        await bystander.close()
        return reason, closes, untouched

    reason, closes, bystander_open = asyncio.run(scenario())
    assert [(code, error) for code, error, _ in closes] == [
        (REVOKED, f"access withdrawn: {reason}")
    ] * 2
    assert max(seconds for *_, seconds in closes) < 1.0, closes
    assert bystander_open


# --- The periodic re-check: what no signal reports -------------------------------------------


@pytest.fixture(scope="module")
def rechecking_daphne(
    redis_server: object, scratch_dir: Path, django_db_setup: None
) -> Iterator[int]:
    """A Daphne re-checking each connection every second."""
    service, port = start_daphne(scratch_dir / "log" / "daphne-recheck.log", NOC_REAUTH_SECONDS="1")
    yield port
    service.stop()


def deactivated(user: User, sessionid: str) -> None:
    User.objects.filter(pk=user.pk).update(is_active=False)


def permission_removed(user: User, sessionid: str) -> None:
    User.user_permissions.through.objects.filter(user=user).delete()


def session_deleted(user: User, sessionid: str) -> None:
    Session.objects.filter(pk=sessionid).delete()


def password_changed(user: User, sessionid: str) -> None:
    User.objects.filter(pk=user.pk).update(password=make_password(None))


def moved_to_another_tenant(user: User, sessionid: str) -> None:
    User.objects.filter(pk=user.pk).update(tenant=Tenant.objects.create(name="globex"))


# Each change, made past Django's signals -> the close codes of the user's session socket and
# token socket (None: still admitted, so left open).
UNSIGNALLED: dict[Callable[[User, str], None], tuple[int, int | None]] = {
    deactivated: (4401, 4401),
    permission_removed: (4403, 4403),
    session_deleted: (4401, None),
    password_changed: (4401, None),
    moved_to_another_tenant: (4403, 4401),
}


def test_changes_no_signal_reports_close_the_sockets_at_their_next_recheck(rechecking_daphne, acme):
    """One user per change, all at once: each waits for its next re-check (up to a second)."""
    port = rechecking_daphne
    colleague = noc_user(acme, "carol")
    colleague_session, colleague_token = session_cookie(colleague), issue_access_token(colleague)
    users = {change: noc_user(acme, change.__name__) for change in UNSIGNALLED}
    credentials = {
        change: (session_cookie(user), issue_access_token(user)) for change, user in users.items()
    }

    async def scenario() -> tuple[dict[str, tuple[int | None, int | None]], list[bool]]:
        # The colleague's sockets are older: by the time the others close, theirs were re-checked.
        colleague_sockets = [
            await opened(port, **session_headers(port, colleague_session)),
            await opened(port, additional_headers=bearer(colleague_token)),
        ]
        sockets = {
            change: (
                await opened(port, **session_headers(port, sessionid)),
                await opened(port, additional_headers=bearer(token)),
            )
            for change, (sessionid, token) in credentials.items()
        }
        for change, user in users.items():
            await asyncio.to_thread(change, user, credentials[change][0])
        closes = {}
        for change, (by_session, by_token) in sockets.items():
            session_closed, *_ = await closed_with(by_session, timeout=5)
            token_closed = None  # still admitted by its token: not waited for
            if UNSIGNALLED[change][1] is not None:
                token_closed, *_ = await closed_with(by_token, timeout=5)
            closes[change.__name__] = (session_closed, token_closed)
        return closes, [await still_open(ws) for ws in colleague_sockets]

    closes, colleague_open = asyncio.run(scenario())
    assert closes == {change.__name__: codes for change, codes in UNSIGNALLED.items()}
    assert colleague_open == [True, True]


# --- Refresh tokens: each good once, only for an active user of its tenant -------------------


def refresh(token: str) -> Any:
    return APIClient().post("/api/token/refresh/", {"refresh": token}, format="json")


def test_a_refresh_token_is_good_once_and_its_successor_works(acme):
    first = str(issue_refresh_token(noc_user(acme, "alice")))
    rotated = refresh(first)
    assert rotated.status_code == 200, rotated.content
    assert set(rotated.json()) == {"access", "refresh"}
    reused = refresh(first)
    assert reused.status_code == 401
    assert reused.json()["detail"] == "Token is blacklisted"
    assert refresh(rotated.json()["refresh"]).status_code == 200


def test_logging_out_through_the_api_makes_the_refresh_token_useless(acme):
    token = str(issue_refresh_token(noc_user(acme, "alice")))
    logout = APIClient().post("/api/token/logout/", {"refresh": token}, format="json")
    assert logout.status_code == 200, logout.content
    assert refresh(token).status_code == 401
    assert APIClient().post("/api/token/logout/", {"refresh": "nonsense"}).status_code == 401


def test_a_deactivated_users_refresh_token_is_refused(acme):
    user = noc_user(acme, "alice")
    token = str(issue_refresh_token(user))
    user.is_active = False
    user.save()
    refused = refresh(token)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "token names no active user"


def test_a_refresh_token_of_a_user_moved_to_another_tenant_is_refused(acme):
    user = noc_user(acme, "alice")
    token = str(issue_refresh_token(user))
    user.tenant = Tenant.objects.create(name="globex")
    user.save()
    refused = refresh(token)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "token's tenant does not match the user's"


def test_a_deleted_users_refresh_token_is_refused_not_a_server_error(acme):
    user = noc_user(acme, "alice")
    token = str(issue_refresh_token(user))
    user.delete()
    assert refresh(token).status_code == 401


def test_a_refreshed_access_token_carries_the_tenant_and_opens_the_api(acme):
    rotated = refresh(str(issue_refresh_token(noc_user(acme, "alice")))).json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {rotated['access']}")
    assert client.get("/api/alerts/").status_code == 200
    assert User.objects.get(username="alice").has_perm(NOC_PERMISSION)


def test_changing_the_password_ends_the_users_refresh_tokens(acme):
    user, colleague = noc_user(acme, "alice"), noc_user(acme, "carol")
    held, colleagues = str(issue_refresh_token(user)), str(issue_refresh_token(colleague))
    user.set_unusable_password()  # as a reset does; any new password hash counts the same
    user.save()
    assert refresh(held).status_code == 401
    assert refresh(colleagues).status_code == 200
    assert refresh(str(issue_refresh_token(user))).status_code == 200  # one issued after it


def test_the_demo_operator_is_created_with_its_password_and_revokes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """`make run` creates it before Redis is up: a revocation then would fail and warn."""
    from apps.noc.operators import ensure_demo_operator

    def revocations() -> list[str]:
        return [r.getMessage() for r in caplog.records if "NOC access revo" in r.getMessage()]

    caplog.set_level("INFO")
    password_file = tmp_path / "operator_password"
    user, password = ensure_demo_operator("demo", "operator", password_file)
    assert revocations() == []
    assert user.check_password(password)
    assert password_file.read_text().strip() == password

    password_file.unlink()  # a new password on request: the old one's sessions end
    user, new_password = ensure_demo_operator("demo", "operator", password_file)
    assert len(revocations()) == 1
    assert new_password != password
    assert user.check_password(new_password)
