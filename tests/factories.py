"""Payloads as devices send them, and registry rows for tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests import environment


def now_iso(offset_seconds: float = 0) -> str:
    return (datetime.now(tz=UTC) + timedelta(seconds=offset_seconds)).isoformat()


def payload(**fields: Any) -> str:
    fields.setdefault("timestamp", now_iso())
    return json.dumps(fields)


def telemetry(**fields: Any) -> str:
    return payload(**{"battery": 85, "signal": -65, "temperature": 25.5, **fields})


def gps(**fields: Any) -> str:
    return payload(**{"lat": 12.9716, "lon": 77.5946, "accuracy": 10.5, **fields})


def panic(**fields: Any) -> str:
    return payload(
        **{
            "alert_type": "panic",
            "severity": "critical",
            "message": "guard pressed the panic button",
            "location": {"lat": 12.97, "lon": 77.59},
            **fields,
        }
    )


# The kind of a test device follows the first word of its id, as sites name them: panic-007 is a
# panic button, so it may raise PANIC (apps/mqtt/topics.py); an id without one of these: other.
KINDS_BY_ID_WORD = {
    "panic": "panic_button",
    "guard": "gps_tracker",
    "gateway": "gateway",
    "gw": "gateway",
    "smoke": "smoke",
    "door": "door",
    "camera": "camera",
    "sensor": "sensor",
}


def kind_named_by(device_id: str) -> str:
    return KINDS_BY_ID_WORD.get(device_id.split("-", 1)[0], "other")


def create_tenant_with_devices(name: str, *device_ids: str, kind: str | None = None) -> Any:
    """A tenant with these devices, each of `kind`, or else of the kind its id names."""
    from apps.devices.services import register_device
    from apps.tenants.models import Tenant

    tenant = Tenant.objects.create(name=name)
    for device_id in device_ids:
        register_device(tenant, device_id, kind or kind_named_by(device_id))
    return tenant


OPERATOR_PASSWORD = environment.OPERATOR_PASSWORD  # a canary: no log may show it


def operator(
    tenant: Any,
    username: str,
    *,
    permissions: bool = True,
    password: str | None = OPERATOR_PASSWORD,
) -> Any:
    """A user of `tenant` (None: no tenant), with the operator permissions unless told not to.

    `password=None`: no usable password, for a user who only ever presents a token (hashing one
    takes about a second here)."""
    from apps.noc.operators import grant_operator_permissions
    from apps.tenants.models import User

    user = User.objects.create_user(username=username, password=password, tenant=tenant)
    if permissions:
        grant_operator_permissions(user)
    return user
