"""Print settings as shell assignments, so operator scripts use exactly what the app resolves.

    eval "$(.venv/bin/python manage.py shell_settings REDIS_URL MQTT_PORT)"

settings.py stays the only reader of the environment and `.env`; a script never re-implements
its defaults or its file parsing.
"""

from __future__ import annotations

import shlex
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Print the named settings as NAME='value' lines for a shell to eval."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="+", metavar="NAME")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in options["names"]:
            if not name.isidentifier() or not hasattr(settings, name):
                raise CommandError(f"no setting named {name!r}")
            self.stdout.write(f"{name}={shlex.quote(str(getattr(settings, name)))}")
