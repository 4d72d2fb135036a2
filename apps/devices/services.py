"""Device registry operations, and what the NOC is told about a device."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, overload

import structlog
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet

from apps.core.events import Event, EventType
from apps.core.isotime import isoformat
from apps.devices.models import (
    DEVICE_ID_RULE,
    MIN_REPORT_INTERVAL,
    RESERVED_ID_RULE,
    Device,
    Guard,
    is_device_id,
    is_reserved_id,
)
from apps.tenants.models import Tenant

log = structlog.get_logger(__name__)


def check_new_device_id(device_id: str) -> None:
    """Raises ValueError for an id that is not one (DEVICE_ID_RULE): it would stand in topics;
    or that is the application's MQTT user name or a client id of its (RESERVED_ID_RULE).
    register_device and the REST API (apps/noc/api/serializers.py) both refuse by this."""
    if not is_device_id(device_id):
        raise ValueError(f"not a device id: {device_id!r}; a device id is {DEVICE_ID_RULE}")
    if is_reserved_id(device_id):
        raise ValueError(f"device id {device_id!r} is {RESERVED_ID_RULE}")


def register_device(
    tenant: Tenant,
    device_id: str,
    kind: str,
    *,
    site: str = "",
    name: str = "",
    auto: bool = False,
    report_interval: timedelta | None = None,
) -> tuple[Device, bool]:
    """The device with this id, created in `tenant` if new. Guard trackers get a Guard.
    `report_interval`: how often it reports, if not as its kind does (apps/mqtt/presence.py).

    Raises ValueError for an id check_new_device_id refuses, or for an interval under
    MIN_REPORT_INTERVAL.
    """
    check_new_device_id(device_id)
    if report_interval is not None and report_interval < MIN_REPORT_INTERVAL:
        raise ValueError(f"a report interval is at least {MIN_REPORT_INTERVAL.seconds} seconds")
    try:
        with transaction.atomic():
            device, created = Device.objects.get_or_create(
                device_id=device_id,
                defaults={
                    "tenant": tenant,
                    "kind": kind,
                    "site": site,
                    "name": name,
                    "auto_registered": auto,
                    "report_interval": report_interval,
                },
            )
            if created and kind == Device.Kind.GPS_TRACKER:
                Guard.objects.create(tenant=tenant, name=device_id, device=device)
    except IntegrityError:
        # Another process registered it at the same moment.
        return Device.objects.get(device_id=device_id), False
    if created:
        log.info(
            "device registered",
            device_id=device_id,
            tenant=tenant.name,
            kind=kind,
            auto_registered=auto,
        )
    return device, created


def auto_register(device_id: str, kind: str, tenant_name: str) -> Device:
    """Register a device first heard from on MQTT (DEVICE_AUTO_REGISTER) in `tenant_name`."""
    tenant, created = Tenant.objects.get_or_create(name=tenant_name)
    if created:
        log.warning(
            "auto-registration tenant did not exist and was created",
            tenant=tenant_name,
            setting="DEVICE_AUTO_REGISTER_TENANT",
        )
    device, _ = register_device(tenant, device_id, kind, auto=True)
    return device


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts `burst-2` before `burst-10`: runs of digits compare as numbers, the rest by letter."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.lower())
        for part in re.split(r"(\d+)", text)
        if part
    )


def search_devices(devices: QuerySet[Device], text: str) -> QuerySet[Device]:
    """The devices whose id, name or site contains `text` (any case)."""
    return devices.filter(
        Q(device_id__icontains=text) | Q(name__icontains=text) | Q(site__icontains=text)
    )


class NaturallyOrdered(Sequence[Device]):
    """Devices in natural order of their id, for a paginator (Django's or DRF's): one narrow
    query of (pk, device_id) sorted here (neither SQLite nor PostgreSQL sorts that way by
    itself), then each page's rows by primary key. A tenant's thousands of devices cost a few
    milliseconds."""

    def __init__(self, devices: QuerySet[Device]) -> None:
        rows = devices.values_list("pk", "device_id")
        self._pks = [pk for pk, _ in sorted(rows, key=lambda row: natural_key(row[1]))]
        self._devices = devices

    def __len__(self) -> int:
        return len(self._pks)

    @overload
    def __getitem__(self, index: int) -> Device: ...
    @overload
    def __getitem__(self, index: slice) -> list[Device]: ...
    def __getitem__(self, index: int | slice) -> Device | list[Device]:
        if isinstance(index, int):
            return self._devices.get(pk=self._pks[index])
        pks = self._pks[index]
        found = self._devices.in_bulk(pks)
        return [found[pk] for pk in pks if pk in found]  # one deleted meanwhile is left out


def device_state(device: Device) -> dict[str, Any]:
    """A device as the NOC shows it (snapshot, device_status and telemetry_update events)."""
    return {
        "device_id": device.device_id,
        "kind": device.kind,
        "site": device.site,
        "status": device.status,
        "battery": device.battery,
        "signal": device.signal,
        "last_seen": isoformat(device.last_seen) if device.last_seen else None,
    }


def status_events(devices: Iterable[Device]) -> list[Event]:
    """One `device_status` event per tenant: `{"devices": [device_state, …]}`, the devices
    whose status changed (a fleet's first batch brings hundreds online at once)."""
    per_tenant: dict[int, list[dict[str, Any]]] = {}
    for device in devices:
        per_tenant.setdefault(device.tenant_id, []).append(device_state(device))
    return [
        Event(tenant_id, EventType.DEVICE_STATUS, {"devices": states})
        for tenant_id, states in per_tenant.items()
    ]
