"""`supervisorctl` for the `make run` stack, wherever VAR_DIR (environment or .env) puts it.

manage.py stackctl status
manage.py stackctl restart celery:general
manage.py stackctl stop mqtt_subscriber
manage.py stackctl shutdown
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.monitoring import stack


class Command(BaseCommand):
    help = "Control the services of a running `make run` stack (supervisorctl)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs="*", help="supervisorctl arguments, e.g. status")

    def handle(self, *args: str, **options: Any) -> None:
        paths = stack.StackPaths(Path(settings.VAR_DIR))
        if stack.supervisor_running(paths) is None:
            raise CommandError(
                f"no stack is running from {paths.var_dir}; start it with `make run`"
            )
        supervisorctl = stack.venv_executable("supervisorctl")
        sys.stdout.flush()
        os.execv(  # noqa: S606  (hands the terminal to supervisorctl)
            supervisorctl, [supervisorctl, "-c", str(paths.supervisor_conf), *(args or ["status"])]
        )
