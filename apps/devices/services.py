"""Device registry operations shared by the admin commands and the subscriber."""

from __future__ import annotations

import structlog
from django.db import IntegrityError, transaction

from apps.devices.models import Device, Guard
from apps.tenants.models import Tenant

log = structlog.get_logger(__name__)

# The kind an auto-registered device gets from the topic prefix it first publishes under.
KIND_BY_PREFIX: dict[str, str] = {
    "device/": Device.Kind.OTHER,
    "guard/": Device.Kind.GPS_TRACKER,
    "sensor/": Device.Kind.SENSOR,
    "alert/": Device.Kind.PANIC_BUTTON,
    "system/": Device.Kind.GATEWAY,
}


def register_device(
    tenant: Tenant, device_id: str, kind: str, *, site: str = "", auto: bool = False
) -> tuple[Device, bool]:
    """The device with this id, created in `tenant` if new. Guard trackers get a Guard."""
    try:
        with transaction.atomic():
            device, created = Device.objects.get_or_create(
                device_id=device_id,
                defaults={"tenant": tenant, "kind": kind, "site": site, "auto_registered": auto},
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


def auto_register(device_id: str, prefix: str, tenant_name: str) -> Device:
    tenant, created = Tenant.objects.get_or_create(name=tenant_name)
    if created:
        log.warning(
            "auto-registration tenant did not exist and was created",
            tenant=tenant_name,
            setting="DEVICE_AUTO_REGISTER_TENANT",
        )
    device, _ = register_device(tenant, device_id, KIND_BY_PREFIX[prefix], auto=True)
    return device
