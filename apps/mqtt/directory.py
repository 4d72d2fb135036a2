"""Which message sources are registered, and as what kind of device, cached in the subscriber's
memory.

A known device is remembered for minutes; an unknown one for seconds, so a flood from an
unregistered device costs one query per few seconds, and a newly registered device is admitted
soon after `register_device`. A change of a device's kind applies within KNOWN_TTL_SECONDS.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps.devices.models import Device, is_reserved_id
from apps.devices.services import auto_register

KNOWN_TTL_SECONDS = 300.0
UNKNOWN_TTL_SECONDS = 5.0


class DeviceDirectory:
    def __init__(self) -> None:
        self._cached: dict[str, tuple[str | None, float]] = {}

    def kind_of(self, source_id: str, registers_as: str) -> str | None:
        """The registered device's kind (Device.Kind), None when there is no such device. With
        DEVICE_AUTO_REGISTER an unknown device is registered now, as a `registers_as`, unless
        its id is the application's (DEVICE_RESERVED_IDS)."""
        now = time.monotonic()
        cached = self._cached.get(source_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        kind = Device.objects.filter(device_id=source_id).values_list("kind", flat=True).first()
        if kind is None and settings.DEVICE_AUTO_REGISTER and not is_reserved_id(source_id):
            device = auto_register(source_id, registers_as, settings.DEVICE_AUTO_REGISTER_TENANT)
            kind = device.kind
        ttl = KNOWN_TTL_SECONDS if kind is not None else UNKNOWN_TTL_SECONDS
        self._cached[source_id] = (kind, now + ttl)
        return kind
