"""/api/devices/<id>/commands/ and /api/commands/: what is refused (4xx), tenant isolation,
permissions and cancelling. The path over MQTT to a device: tests/mqtt/test_device_commands.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.devices.commands import MAX_PARAMS_BYTES
from apps.devices.models import CommandStatus, DeviceCommand
from apps.noc.auth import issue_access_token
from apps.tenants.models import Tenant, User
from tests.factories import create_tenant_with_devices, operator

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_server")]


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_access_token(user)}")
    return client


@pytest.fixture
def acme() -> Tenant:
    return create_tenant_with_devices("acme", "door-7")


@pytest.fixture
def alice(acme: Tenant) -> APIClient:
    return client_for(operator(acme, "alice", password=None))


@pytest.fixture
def bob() -> APIClient:
    return client_for(
        operator(create_tenant_with_devices("globex", "door-9"), "bob", password=None)
    )


def send(client: APIClient, device_id: str, **body: Any) -> Any:
    return client.post(f"/api/devices/{device_id}/commands/", body, format="json")


def test_a_command_is_stored_queued_with_its_history_and_listed(alice: APIClient):
    response = send(alice, "door-7", command="unlock", params={"seconds": 5}, ttl_seconds=30)

    assert response.status_code == 201, response.content
    command = response.json()
    assert command["status"] == "QUEUED"
    assert command["device_id"] == "door-7"
    assert command["params"] == {"seconds": 5}
    assert command["created_by"] == "alice"
    assert [(h["from_status"], h["to_status"], h["by"]) for h in command["history"]] == [
        ("", "QUEUED", "alice")
    ]
    uuid.UUID(command["command_id"])
    listed = alice.get("/api/devices/door-7/commands/").json()["results"]
    assert [c["command_id"] for c in listed] == [command["command_id"]]
    assert alice.get(f"/api/commands/{command['command_id']}/").json() == command
    assert alice.get("/api/commands/?status=QUEUED&device=door-7").json()["count"] == 1
    assert alice.get("/api/commands/?status=SENT").json()["count"] == 0


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"command": "reboot/#"}, "command must be 1-32 letters, digits, _ or -"),
        ({"command": "x" * 33}, "command must be"),
        (
            {"command": "set", "params": {"blob": "x" * MAX_PARAMS_BYTES}},
            f"at most {MAX_PARAMS_BYTES}",
        ),
        ({"command": "set", "params": [1, 2]}, "params must be a JSON object"),
        ({"command": "set", "ttl_seconds": 0}, "ttl_seconds"),
        ({"command": "set", "ttl_seconds": 86401}, "ttl_seconds"),
    ],
)
def test_an_invalid_name_oversized_params_or_a_bad_ttl_is_a_400_that_names_the_rule(
    alice: APIClient, body: dict[str, Any], names: str
):
    response = send(alice, "door-7", **body)

    assert response.status_code == 400
    assert names in str(response.json())
    assert not DeviceCommand.objects.exists()


def test_another_tenants_device_or_command_is_a_404_like_one_that_does_not_exist(
    alice: APIClient, bob: APIClient
):
    theirs = send(bob, "door-9", command="unlock").json()["command_id"]

    # Each of another tenant's answers the same as what does not exist at all.
    pairs = [
        (send(alice, "door-9", command="unlock"), send(alice, "no-such-device", command="unlock")),
        (alice.get("/api/devices/door-9/commands/"), alice.get("/api/devices/nothing/commands/")),
        (alice.get(f"/api/commands/{theirs}/"), alice.get(f"/api/commands/{uuid.uuid4()}/")),
        (
            alice.post(f"/api/commands/{theirs}/cancel/"),
            alice.post(f"/api/commands/{uuid.uuid4()}/cancel/"),
        ),
    ]
    for theirs_answer, nothing in pairs:
        assert theirs_answer.status_code == nothing.status_code == 404
        assert theirs_answer.json() == nothing.json()
    assert alice.get("/api/commands/").json()["count"] == 0
    assert DeviceCommand.objects.get().status == CommandStatus.QUEUED


def test_an_operator_without_the_permission_may_look_but_not_send_or_cancel(acme: Tenant):
    watcher = operator(acme, "watcher", password=None)
    watcher.user_permissions.set([])
    from django.contrib.auth.models import Permission

    watcher.user_permissions.add(Permission.objects.get(codename="view_noc_dashboard"))
    client = client_for(watcher)
    command_id = send(client_for(operator(acme, "alice", password=None)), "door-7", command="x")

    assert send(client, "door-7", command="unlock").status_code == 403
    assert (
        client.post(f"/api/commands/{command_id.json()['command_id']}/cancel/").status_code == 403
    )
    assert client.get("/api/devices/door-7/commands/").status_code == 200


def test_a_queued_command_is_cancelled_once_and_a_sent_one_not_at_all(alice: APIClient):
    queued = send(alice, "door-7", command="unlock").json()["command_id"]
    sent = send(alice, "door-7", command="lock").json()["command_id"]
    DeviceCommand.objects.filter(pk=sent).update(status=CommandStatus.SENT)

    cancelled = alice.post(f"/api/commands/{queued}/cancel/")
    again = alice.post(f"/api/commands/{queued}/cancel/")
    too_late = alice.post(f"/api/commands/{sent}/cancel/")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["history"][-1]["by"] == "alice"
    assert again.status_code == 409
    assert "only a QUEUED command can be cancelled; this one is CANCELLED" in again.json()["detail"]
    assert too_late.status_code == 409
    assert DeviceCommand.objects.get(pk=sent).status == CommandStatus.SENT
