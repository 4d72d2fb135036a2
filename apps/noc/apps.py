from django.apps import AppConfig


class NocConfig(AppConfig):
    name = "apps.noc"
    label = "noc"
    verbose_name = "NOC"

    def ready(self) -> None:
        from apps.noc import (
            logins,  # noqa: F401  logs lockouts
            revocation,  # noqa: F401  connects the signal receivers
        )
        from apps.noc.api import schema  # noqa: F401  registers the OpenAPI extension
