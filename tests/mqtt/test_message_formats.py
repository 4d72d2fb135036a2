"""The device message reference: docs/messages.md is what the schemas and the topic table say,
each kind's example passes intake, and a refused field's dead letter names its section."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.core.envelope import Envelope
from apps.devices.messages import EXAMPLE_TIME, MESSAGE_KINDS
from apps.devices.services import register_device
from apps.mqtt.intake import Intake, Reason, Rejection
from apps.mqtt.management.commands import message_formats
from apps.mqtt.topics import KINDS_BY_NAME, parse_topic
from tests.factories import create_tenant_with_devices, now_iso


def test_docs_messages_md_is_up_to_date_and_the_check_fails_on_a_stale_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    call_command("message_formats", "--check")  # out of date? run manage.py message_formats --write
    stale = tmp_path / "messages.md"
    stale.write_text(message_formats.render().replace("| yes |", "| no |"))
    monkeypatch.setattr(message_formats, "DOC", stale)
    with pytest.raises(CommandError, match="--write"):
        call_command("message_formats", "--check")


@pytest.mark.django_db
def test_the_example_of_every_kind_passes_intake():
    tenant = create_tenant_with_devices("acme")
    sent_at = datetime.fromisoformat(EXAMPLE_TIME).timestamp()
    intake = Intake()
    for message in MESSAGE_KINDS:
        source_id = parse_topic(message.example_topic).source_id
        register_device(tenant, source_id, KINDS_BY_NAME[message.name].registers_as)
        body = json.dumps(message.example).encode()
        outcome = intake.check(message.example_topic, body, received_at=sent_at)
        assert isinstance(outcome, Envelope), (message.name, outcome)
        assert outcome.kind == message.name


@pytest.mark.django_db
def test_a_missing_or_invalid_field_is_dead_lettered_naming_its_kinds_documentation():
    create_tenant_with_devices("acme", "sensor-1", "guard-1")
    intake = Intake()
    missing = intake.check(
        "sensor/sensor-1/temperature", f'{{"timestamp": "{now_iso()}"}}'.encode()
    )
    invalid = intake.check(
        "guard/guard-1/gps", f'{{"lat": 91, "lon": 0, "timestamp": "{now_iso()}"}}'.encode()
    )
    for outcome, kind in ((missing, "sensor"), (invalid, "gps")):
        assert isinstance(outcome, Rejection)
        assert outcome.reason is Reason.SCHEMA
        assert outcome.detail.endswith(f"; see docs/messages.md#{kind}"), outcome.detail
    assert (Path(__file__).parents[2] / "docs" / "messages.md").read_text().count(
        "\n## sensor\n"
    ) == 1
