"""The README's first messages, one of each topic kind, pass intake as printed: copied from
README.md, with the devices registered as its register_device lines say."""

from __future__ import annotations

import re
import shlex
import uuid

import pytest

from apps.core.envelope import Envelope
from apps.devices.services import register_device
from apps.mqtt.intake import Intake
from apps.mqtt.topics import KINDS_BY_NAME
from tests.factories import create_tenant_with_devices, now_iso
from tests.services import ROOT


def first_message_commands() -> list[list[str]]:
    """The shell commands of the README's "Send a first message" section, as argv lists, with
    what the shell would fill in: the time and the id of the command sent."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Send a first message\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    filled = {"$(date -Is)": now_iso(), "$COMMAND_ID": str(uuid.uuid4())}
    commands = []
    for line in lines:
        for variable, value in filled.items():
            line = line.replace(variable, value)
        if line.strip() and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.django_db
def test_the_readmes_first_messages_cover_every_topic_kind_and_pass_intake(settings):
    # As `make run`'s .env has it: the section's first message registers its device.
    settings.DEVICE_AUTO_REGISTER = True
    settings.DEVICE_AUTO_REGISTER_TENANT = "demo"
    tenant = create_tenant_with_devices("demo")
    intake = Intake()
    kinds = set()
    for argv in first_message_commands():
        if "register_device" in argv:
            register_device(tenant, option(argv, "--id"), option(argv, "--kind"))
        elif argv[0] == "mosquitto_pub":
            topic, body = option(argv, "-t"), option(argv, "-m")
            outcome = intake.check(topic, body.encode())
            assert isinstance(outcome, Envelope), (argv, outcome)
            kinds.add(outcome.kind)
    assert kinds == set(KINDS_BY_NAME)
