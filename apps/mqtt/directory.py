"""Which message sources are registered, and as what kind of device, cached in the subscriber's
memory.

The whole registry is read in one query, and again every KNOWN_TTL_SECONDS, so a change of a
device's kind applies within that time: a fleet of thousands costs the subscriber one query
every few minutes, not one per device (a thousand queries at start, and again whenever their
answers expired together, each time stalling intake). An id not in the registry as last read
is asked about alone (registered since, or auto-registered now) and, if unknown, remembered as
such for seconds, so a flood from an unregistered device costs one query per few seconds and a
newly registered device is admitted soon after `register_device`. Known ids are bounded by the
registry; unknown ones by UNKNOWN_MAX_ENTRIES, so a stream of ever new ids costs queries but no
memory.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps.devices.models import Device, is_reserved_id
from apps.devices.services import auto_register

KNOWN_TTL_SECONDS = 300.0
UNKNOWN_TTL_SECONDS = 5.0
UNKNOWN_MAX_ENTRIES = 1000  # beyond, the id refused longest ago is forgotten first


class DeviceDirectory:
    def __init__(self) -> None:
        # Device id → its kind, as the registry was last read (until _read_again_at, monotonic);
        # unknown ids, in refusal order, apart: until when the answer holds; bounded in number.
        self._known: dict[str, str] = {}
        self._read_again_at = 0.0
        self._unknown: dict[str, float] = {}

    def kind_of(self, source_id: str, registers_as: str) -> str | None:
        """The registered device's kind (Device.Kind), None when there is no such device. With
        DEVICE_AUTO_REGISTER an unknown device is registered now, as a `registers_as`, unless
        its id is the application's (DEVICE_RESERVED_IDS)."""
        now = time.monotonic()
        if now >= self._read_again_at:
            self._known = dict(Device.objects.values_list("device_id", "kind").iterator(5000))
            self._read_again_at = now + KNOWN_TTL_SECONDS
        known = self._known.get(source_id)
        if known is not None:
            return known
        if self._unknown.get(source_id, 0.0) > now:
            return None
        kind = Device.objects.filter(device_id=source_id).values_list("kind", flat=True).first()
        if kind is None and settings.DEVICE_AUTO_REGISTER and not is_reserved_id(source_id):
            device = auto_register(source_id, registers_as, settings.DEVICE_AUTO_REGISTER_TENANT)
            kind = device.kind
        self._unknown.pop(source_id, None)
        if kind is not None:
            self._known[source_id] = kind
            return kind
        if len(self._unknown) >= UNKNOWN_MAX_ENTRIES:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[source_id] = now + UNKNOWN_TTL_SECONDS
        return None
