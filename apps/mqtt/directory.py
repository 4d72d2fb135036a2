"""Which message sources are registered, cached in the subscriber's memory.

A known device is remembered for minutes; an unknown one for seconds, so a flood from an
unregistered device costs one query per few seconds, and a newly registered device is admitted
soon after `register_device`.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps.devices.models import Device
from apps.devices.services import auto_register

KNOWN_TTL_SECONDS = 300.0
UNKNOWN_TTL_SECONDS = 5.0


class DeviceDirectory:
    def __init__(self) -> None:
        self._expires: dict[str, tuple[bool, float]] = {}

    def admit(self, source_id: str, registers_as: str) -> bool:
        """Whether the device is registered; with DEVICE_AUTO_REGISTER it is registered now,
        as a device of kind `registers_as`."""
        now = time.monotonic()
        cached = self._expires.get(source_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        known = Device.objects.filter(device_id=source_id).exists()
        if not known and settings.DEVICE_AUTO_REGISTER:
            auto_register(source_id, registers_as, settings.DEVICE_AUTO_REGISTER_TENANT)
            known = True
        ttl = KNOWN_TTL_SECONDS if known else UNKNOWN_TTL_SECONDS
        self._expires[source_id] = (known, now + ttl)
        return known
