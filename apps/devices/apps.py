from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class DevicesConfig(AppConfig):
    name = "apps.devices"
    label = "devices"
    verbose_name = "Devices"

    def ready(self) -> None:
        # settings.py cannot import the model, so the kinds it names are checked here, at start.
        from apps.devices.models import Device

        for setting in ("DEVICE_REPORT_INTERVALS", "DEVICE_EVENT_ONLY_KINDS"):
            if unknown := sorted(set(getattr(settings, setting)) - set(Device.Kind.values)):
                raise ImproperlyConfigured(
                    f"{setting} names no device kind {unknown}; the kinds are "
                    f"{', '.join(Device.Kind.values)}"
                )
