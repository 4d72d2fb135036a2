"""Operator commands: create_tenant, create_operator, issue_token."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from apps.tenants.models import Tenant, User
from tests.services import ROOT


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def manage_py(*args: str, **popen: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, **popen)


class Terminal:
    """A pseudo-terminal to talk to a child process, as an operator at a keyboard would."""

    def __init__(self) -> None:
        self.controller, self.device = pty.openpty()
        self.output = ""

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} never appeared; the terminal shows {self.output!r}")
            if select.select([self.controller], [], [], 0.1)[0]:
                try:
                    self.output += os.read(self.controller, 4096).decode(errors="replace")
                except OSError:  # EIO: the process has exited and closed the terminal
                    raise AssertionError(f"{text!r} never appeared in {self.output!r}") from None

    def type_line(self, line: str) -> None:
        os.write(self.controller, line.encode() + b"\n")


@pytest.mark.django_db
def test_create_tenant_creates_it_once_and_says_so_when_it_exists():
    assert "Created tenant acme." in run("create_tenant", "acme")
    assert "Tenant acme already exists; nothing to do." in run("create_tenant", "acme")
    assert Tenant.objects.filter(name="acme").count() == 1


@pytest.mark.django_db
def test_create_operator_takes_the_password_from_the_named_variable(
    monkeypatch: pytest.MonkeyPatch,
):
    run("create_tenant", "acme")
    monkeypatch.setenv("ACME_OP_PASSWORD", "correct horse battery")
    options = ["--tenant", "acme", "--username", "op", "--password-env", "ACME_OP_PASSWORD"]
    output = run("create_operator", *options)
    assert "Created operator op of acme" in output

    user = User.objects.get(username="op")
    assert user.tenant == Tenant.objects.get(name="acme")
    assert user.has_perm("alerts.view_noc_dashboard")
    assert user.has_perm("alerts.change_alert")
    token = APIClient().post("/api/token/", {"username": "op", "password": "correct horse battery"})
    assert token.status_code == 200


@pytest.mark.django_db
def test_create_operator_names_the_fix_for_each_mistake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OP_PASSWORD", "correct horse battery")
    monkeypatch.delenv("UNSET_PASSWORD", raising=False)
    common = ("--username", "op", "--password-env")
    with pytest.raises(CommandError, match=r"create it first with manage\.py create_tenant"):
        call_command("create_operator", "--tenant", "nope", *common, "OP_PASSWORD")

    run("create_tenant", "acme")
    run("create_tenant", "globex")
    with pytest.raises(CommandError, match="UNSET_PASSWORD is not set or is empty"):
        call_command("create_operator", "--tenant", "acme", *common, "UNSET_PASSWORD")

    run("create_operator", "--tenant", "acme", *common, "OP_PASSWORD")
    with pytest.raises(CommandError, match="belongs to acme; choose another username"):
        call_command("create_operator", "--tenant", "globex", *common, "OP_PASSWORD")


@pytest.mark.django_db(transaction=True)
def test_create_operator_without_a_terminal_or_password_env_refuses_to_prompt():
    Tenant.objects.create(name="acme")
    process = manage_py(
        "create_operator", "--tenant", "acme", "--username", "op",
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "stdin is not a terminal" in stderr
    assert "--password-env VAR" in stderr
    assert not User.objects.filter(username="op").exists()


@pytest.mark.django_db(transaction=True)
def test_create_operator_on_a_terminal_asks_for_the_password_twice():
    Tenant.objects.create(name="acme")
    terminal = Terminal()
    # A new session has no /dev/tty, so getpass prompts on the pty it is given as stdin.
    process = manage_py(
        "create_operator", "--tenant", "acme", "--username", "op",
        stdin=terminal.device, stdout=terminal.device, stderr=terminal.device,
        start_new_session=True,
    )  # fmt: skip
    try:
        # getpass flushes typed-ahead input, so each answer waits for its prompt.
        terminal.expect("Password: ")
        terminal.type_line("correct horse battery")
        terminal.expect("Password (again): ")
        terminal.type_line("correct horse battery")
        terminal.expect("Created operator op of acme")
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        os.close(terminal.device)
        os.close(terminal.controller)
    assert User.objects.get(username="op").check_password("correct horse battery")


@pytest.mark.django_db
def test_issue_token_prints_only_a_token_the_api_accepts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OP_PASSWORD", "correct horse battery")
    run("create_tenant", "acme")
    run("create_operator", "--tenant", "acme", "--username", "op", "--password-env", "OP_PASSWORD")

    token = run("issue_token", "--user", "op").strip()
    assert token.count(".") == 2
    assert "\n" not in token
    response = APIClient().get("/api/alerts/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200


@pytest.mark.django_db
def test_issue_token_refuses_unknown_users_and_users_without_a_tenant():
    with pytest.raises(CommandError, match="no user 'ghost'; create one with"):
        call_command("issue_token", "--user", "ghost")
    User.objects.create_user(username="root", password="x")
    with pytest.raises(CommandError, match="belongs to no tenant"):
        call_command("issue_token", "--user", "root")
