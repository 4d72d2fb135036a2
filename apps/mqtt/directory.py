"""Which message sources are registered, cached in the subscriber's memory.

A known device is remembered for minutes; an unknown one for seconds, so a flood from an
unregistered device costs one query per few seconds, and a newly registered device is admitted
soon after `register_device`. Known ids are bounded by the registry; unknown ones by
UNKNOWN_MAX_ENTRIES, so a stream of ever new ids costs queries but no memory.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps.devices.models import Device
from apps.devices.services import auto_register

KNOWN_TTL_SECONDS = 300.0
UNKNOWN_TTL_SECONDS = 5.0
UNKNOWN_MAX_ENTRIES = 1000  # beyond, the id refused longest ago is forgotten first


class DeviceDirectory:
    def __init__(self) -> None:
        # Device id → until when (monotonic) the answer holds; unknown ones in refusal order.
        self._known: dict[str, float] = {}
        self._unknown: dict[str, float] = {}

    def admit(self, source_id: str, registers_as: str) -> bool:
        """Whether the device is registered; with DEVICE_AUTO_REGISTER it is registered now,
        as a device of kind `registers_as`."""
        now = time.monotonic()
        if self._known.get(source_id, 0.0) > now:
            return True
        if self._unknown.get(source_id, 0.0) > now:
            return False
        known = Device.objects.filter(device_id=source_id).exists()
        if not known and settings.DEVICE_AUTO_REGISTER:
            auto_register(source_id, registers_as, settings.DEVICE_AUTO_REGISTER_TENANT)
            known = True
        self._unknown.pop(source_id, None)
        if known:
            self._known[source_id] = now + KNOWN_TTL_SECONDS
            return True
        self._known.pop(source_id, None)
        if len(self._unknown) >= UNKNOWN_MAX_ENTRIES:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[source_id] = now + UNKNOWN_TTL_SECONDS
        return False
