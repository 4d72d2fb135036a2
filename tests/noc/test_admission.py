"""Admission to the NOC asked for many connections at once, as a Daphne process re-checks them.

`auth.admit_to_noc` serves both a connect (one credential) and the periodic re-check of all of
a process's connections: it must say what a connect would say, for each, and read the database
a fixed number of times however many connections there are.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.noc import auth
from apps.noc.auth import Credentials, admit_to_noc, issue_access_token
from apps.tenants.models import Tenant, User
from tests.noc.test_revocation import noc_user, session_cookie

pytestmark = pytest.mark.django_db


def test_rechecking_many_token_connections_reads_the_database_twice_whatever_their_number():
    acme = Tenant.objects.create(name="acme")
    tokens = [issue_access_token(noc_user(acme, f"op-{n}")) for n in range(30)]
    # Several connections of one user share a token: each is verified once.
    credentials = [Credentials(token=token) for token in tokens for _ in range(3)]

    with CaptureQueriesContext(connection) as queries:
        verdicts = admit_to_noc(credentials)

    assert all(isinstance(verdict, auth.Admission) for verdict in verdicts.values())
    assert len(verdicts) == 30
    assert len(queries) == 2, [query["sql"] for query in queries]  # the users, the permission


def test_each_credential_gets_the_verdict_a_connect_would_get():
    acme, globex = Tenant.objects.create(name="acme"), Tenant.objects.create(name="globex")
    allowed = noc_user(acme, "allowed")
    deactivated = noc_user(acme, "deactivated")
    without_permission = noc_user(acme, "without-permission", permissions=False)
    by_group = noc_user(acme, "by-group", permissions=False)
    operators = Group.objects.create(name="operators")
    operators.permissions.add(Permission.objects.get(codename="view_noc_dashboard"))
    by_group.groups.add(operators)
    superuser = noc_user(acme, "superuser", permissions=False)
    moved = noc_user(acme, "moved")
    tenantless = noc_user(None, "tenantless")
    by_session = noc_user(acme, "by-session")
    tokens = {
        user.username: issue_access_token(user)
        for user in (allowed, deactivated, without_permission, by_group, superuser, moved)
    }
    tokens["tenantless"] = issue_access_token(tenantless)
    session = session_cookie(by_session)
    ended_session = session_cookie(noc_user(acme, "logged-out"))
    # Changes made after the credentials were handed out, past Django's signals.
    User.objects.filter(pk=deactivated.pk).update(is_active=False)
    User.objects.filter(pk=superuser.pk).update(is_superuser=True)
    User.objects.filter(pk=moved.pk).update(tenant=globex)
    Session.objects.filter(pk=ended_session).delete()  # logged out past the signal

    presented = {name: Credentials(token=token) for name, token in tokens.items()}
    presented["forged"] = Credentials(token=tokens["allowed"][:-2] + "xx")
    presented["by-session"] = Credentials(session_key=session)
    presented["ended-session"] = Credentials(session_key=ended_session)
    presented["nothing"] = Credentials()
    verdicts = admit_to_noc(list(presented.values()))

    def outcome(name: str) -> str | int:
        verdict = verdicts[presented[name]]
        if isinstance(verdict, auth.Admission):
            return verdict.user.username
        return verdict.close_code

    assert {name: outcome(name) for name in presented} == {
        "allowed": "allowed",
        "deactivated": 4401,
        "without-permission": 4403,
        "by-group": "by-group",
        "superuser": "superuser",
        "moved": 4401,  # the token names the old tenant
        "tenantless": 4401,
        "forged": 4401,
        "by-session": "by-session",
        "ended-session": 4401,
        "nothing": 4401,
    }
    admitted = verdicts[presented["allowed"]]
    assert isinstance(admitted, auth.Admission)
    assert admitted.expires_at is not None
    by_session_admission = verdicts[presented["by-session"]]
    assert isinstance(by_session_admission, auth.Admission)
    assert by_session_admission.expires_at is None


def test_one_unreadable_session_is_refused_alone_and_the_other_connections_still_get_verdicts():
    from importlib import import_module

    from django.conf import settings

    acme = Tenant.objects.create(name="acme")
    token = issue_access_token(noc_user(acme, "allowed"))
    # A session whose user id no backend can read: get_user raises, as a corrupt row would.
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store["_auth_user_id"] = "not-a-number"
    store["_auth_user_backend"] = settings.AUTHENTICATION_BACKENDS[-1]
    store.create()

    verdicts = admit_to_noc([Credentials(token=token), Credentials(session_key=store.session_key)])

    assert isinstance(verdicts[Credentials(token=token)], auth.Admission)
    refused = verdicts[Credentials(session_key=store.session_key)]
    assert isinstance(refused, auth.TokenRefusedError)
    assert refused.close_code == auth.CLOSE_UNAUTHENTICATED
