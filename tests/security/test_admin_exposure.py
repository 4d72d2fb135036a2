"""The admin shows every tenant's data (issue 10, hole 5): it is served only when enabled, only
to superusers, and only to clients in ADMIN_ALLOWED_NETWORKS; anything else is a 404."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.core.models import DeadLetter
from apps.tenants.models import User
from tests.security.conftest import ADMIN_HOST, DIRECT, PROXY, Daphne
from tests.services import ROOT

PASSWORD = "admin-Pa55phrase-4c1d"


@pytest.fixture
def fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def admin_user(username: str, *, superuser: bool) -> User:
    if superuser:
        return User.objects.create_superuser(username=username, password=PASSWORD)
    return User.objects.create_user(username=username, password=PASSWORD, is_staff=True)


def test_the_admin_is_off_by_default_in_production_and_on_in_development():
    production = {
        "DJANGO_DEBUG": "false",
        "MQTT_USERNAME": "bus",
        "MQTT_PASSWORD": "secret",
        "MONITORING_API_KEY": "k" * 32,
    }
    show = "from django.conf import settings; print(settings.ADMIN_ENABLED)"
    for overrides, enabled in ((production, "False"), ({}, "True")):
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", show],
            cwd=ROOT, env={**os.environ, **overrides}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.stdout.strip() == enabled, result.stderr


@pytest.mark.django_db
def test_the_admin_is_a_404_when_disabled(settings: Any):
    settings.ADMIN_ENABLED = False
    client = Client()
    client.force_login(admin_user("root", superuser=True))
    for path in ("/admin/", "/admin/login/", "/admin", "/admin/tenants/tenant/"):
        assert client.get(path).status_code == 404, path


@pytest.mark.django_db
def test_the_admin_is_a_404_from_an_address_outside_the_allowed_networks():
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(admin_user("root", superuser=True))
    assert client.get("/admin/").status_code == 404
    assert client.get("/admin/login/", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 404
    assert Client(REMOTE_ADDR="127.0.0.1").get("/admin/login/").status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("fast_hasher", "redis_server")
def test_staff_who_are_not_superusers_are_refused():
    staff = admin_user("staff", superuser=False)
    client = Client()
    login = client.post("/admin/login/", {"username": "staff", "password": PASSWORD})
    assert login.status_code == 200
    assert "it is for superusers only" in login.content.decode()
    assert "_auth_user_id" not in client.session

    client.force_login(staff)  # signed in elsewhere (the NOC login page) as staff
    for path in ("/admin/", "/admin/tenants/tenant/", "/admin/core/deadletter/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
@pytest.mark.usefixtures("fast_hasher", "redis_server")
def test_a_superuser_from_an_allowed_address_gets_in_and_weak_passwords_are_refused_there():
    admin_user("root", superuser=True)
    DeadLetter.objects.create(
        stage="intake", reason="json", topic="device/x/telemetry", payload=b"{", payload_size=1,
        received_at=timezone.now(),
    )  # fmt: skip
    client = Client()
    login = client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert login.status_code == 302
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/core/deadletter/").status_code == 200

    added = client.post(
        "/admin/tenants/user/add/",
        {"username": "weak", "usable_password": "true", "password1": "abc", "password2": "abc"},
    )
    assert added.status_code == 200
    assert "This password is too short. It must contain at least 12 characters." in (
        added.content.decode()
    )
    assert not User.objects.filter(username="weak").exists()


# --- Through the real Daphne: the address is the one every check uses, and cannot be forged -----


@pytest.mark.parametrize(
    ("source", "forwarded_for", "status"),
    [
        (ADMIN_HOST, None, 200),  # the allowed host, directly
        (DIRECT, None, 404),  # any other host
        (DIRECT, ADMIN_HOST, 404),  # ... claiming to be the allowed one
        (PROXY, f"198.51.100.1, {ADMIN_HOST}", 200),  # the trusted proxy relays the allowed host
        (PROXY, f"{ADMIN_HOST}, 198.51.100.1", 404),  # ... or another that forged the left entry
        (ADMIN_HOST, "198.51.100.1", 404),  # relayed by a proxy nobody trusts: client unknown
    ],
)
def test_the_admin_answers_only_the_allowed_client_however_it_is_forwarded(
    proxied_daphne: Daphne, source: str, forwarded_for: str | None, status: int
):
    answer = proxied_daphne.request(
        "GET", "/admin/login/", source=source, forwarded_for=forwarded_for
    )
    assert answer.status == status
