"""Mosquitto's password file and ACL, written from the device registry.

A device logs in with its device id as user name and may publish only under its own id, on the
ingest prefixes its kind may use (apps/mqtt/topics.py, `published_by`), and read only its own
commands; only the application account reads everything. The ACL is derived from the device
registry, the topic table the subscriber uses, and the downlink's command topic.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from apps.mqtt.downlink import COMMAND_TOPIC
from apps.mqtt.topics import prefixes_for

# Mosquitto 2's password format `$7$`: PBKDF2-HMAC-SHA512, its default iteration count.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    encode = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${encode(salt).decode()}${encode(digest).decode()}"


def new_device_password() -> tuple[str, str]:
    """A fresh password and its Mosquitto hash; only the hash is stored."""
    password = secrets.token_urlsafe(18)
    return password, mosquitto_hash(password)


def render_acl(app_username: str, devices: Iterable[tuple[str, str]]) -> str:
    """The ACL for the application account and `devices`, (device id, Device.Kind) pairs."""
    own_commands = COMMAND_TOPIC.format(device_id="%u", command="#")
    any_command = COMMAND_TOPIC.format(device_id="+", command="#")
    lines = [
        "# Written by `manage.py sync_mqtt_credentials` (apps/mqtt/credentials.py).",
        "# Devices log in with their device id as user name (%u): the password proves it,",
        "# unlike the client id, which the device listener replaces by the user name.",
        "",
        "# --- Every device: read its own commands ------------------------------------------",
        f"pattern read {own_commands}",
        "",
        "# --- The application account (MQTT_USERNAME): subscriber, downlink, health --------",
        "# Only it may read `#`; Mosquitto checks read access on every delivered message, so a",
        "# device subscribed to `#` still receives nothing but its own commands.",
        f"user {app_username}",
        "topic read #",
        f"topic write {any_command}",
        "# `#` does not match $SYS topics; the health check reads the broker's uptime.",
        "topic read $SYS/broker/uptime",
        "",
        "# --- Each device: publish under its own id, on the prefixes its kind may use -------",
    ]
    for device_id, kind in sorted(devices):
        lines += ["", f"user {device_id}", f"# a {kind}"]
        lines += [f"topic write {prefix}{device_id}/#" for prefix in prefixes_for(kind)]
    return "\n".join(lines) + "\n"


def render_password_file(entries: Iterable[tuple[str, str]]) -> str:
    """`user:hash` lines for (user name, Mosquitto hash) pairs."""
    return "".join(f"{user}:{hashed}\n" for user, hashed in sorted(entries))


BROKER_GROUP = "mosquitto"  # Debian's mosquitto runs as this user and group


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically, readable by its owner and the broker's group only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.unlink(missing_ok=True)  # left by a crash; it may have been anyone's
    # Created private, then written: never readable by others, not even for an instant.
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    staging.chmod(0o640)  # whatever the umask took away from the group
    # No such group here, or not ours to give: then the file keeps the writer's group.
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(staging, -1, grp.getgrnam(BROKER_GROUP).gr_gid)
    staging.replace(path)
