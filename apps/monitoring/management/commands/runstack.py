"""`make run`: set up and run the whole stack in the foreground under supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.monitoring import stack
from apps.noc.operators import ensure_demo_operator

STARTUP_DEADLINE_SECONDS = 90


class Command(BaseCommand):
    help = "Run Redis, Mosquitto, Daphne, the Celery workers, beat and the MQTT subscriber."

    def handle(self, *args: Any, **options: Any) -> None:
        paths = stack.StackPaths(Path(settings.VAR_DIR))
        try:
            programs = stack.prepare(paths)
        except stack.StackError as exc:
            raise CommandError(str(exc)) from None
        if stack.manages_redis() and not settings.REDIS_PASSWORD:
            self.stderr.write(
                "REDIS_URL has no password, so this stack's Redis lets every local user in: "
                "put one in it, REDIS_URL=redis://:<password>@host:port "
                "(scripts/init_env.py adds one to .env)"
            )
        self.stdout.write("Migrating the database …")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        user, password = ensure_demo_operator(
            settings.DEMO_TENANT, settings.DEMO_OPERATOR, paths.operator_password_file
        )
        order = " → ".join(dict.fromkeys(program.group or program.name for program in programs))
        self.stdout.write(f"Starting {order} (logs in {paths.log_dir}/)")
        # The services read .env themselves, so an edit to it applies when one is restarted.
        environment = {
            name: value
            for name, value in os.environ.items()
            if name not in settings.ENV_FILE_VARIABLES
        }
        supervisord = subprocess.Popen(
            [stack.venv_executable("supervisord"), "-n", "-c", str(paths.supervisor_conf)],
            env=environment,
        )
        forward = _Forwarder(supervisord)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGHUP, forward)
        self._report_when_healthy(supervisord)
        if supervisord.poll() is None:
            self._print_banner(user.username, password, paths)
        code = supervisord.wait()
        self.stdout.write("Stack stopped.")
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            sys.exit(code)

    def _report_when_healthy(self, supervisord: subprocess.Popen[bytes]) -> None:
        url = f"http://{settings.HTTP_HOST}:{settings.HTTP_PORT}/monitoring/health/"
        started = time.monotonic()
        down: list[str] = []
        last_report = started
        while supervisord.poll() is None:
            elapsed = time.monotonic() - started
            healthy, down = _health(url)
            if healthy:
                self.stdout.write(self.style.SUCCESS(f"Stack is healthy after {elapsed:.0f} s."))
                return
            if elapsed > STARTUP_DEADLINE_SECONDS:
                self.stdout.write(
                    self.style.ERROR(
                        f"Not healthy after {STARTUP_DEADLINE_SECONDS} s; still down: "
                        f"{', '.join(down)}. Look in the logs under {settings.VAR_DIR}/log/."
                    )
                )
                return
            if time.monotonic() - last_report >= 10:
                self.stdout.write(f"  waiting for: {', '.join(down) or 'the web server'} …")
                last_report = time.monotonic()
            time.sleep(1)

    def _print_banner(self, username: str, password: str, paths: stack.StackPaths) -> None:
        base = f"http://localhost:{settings.HTTP_PORT}"
        conf = paths.supervisor_conf
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  NOC dashboard:  {base}/noc/   user {username!r}  password {password!r}",
                    f"                  (password kept in {paths.operator_password_file})",
                    f"  API:            {base}/api/docs/   token: manage.py issue_token --user "
                    f"{username}",
                    f"  Health:         curl {base}/monitoring/health/",
                    f"  First message:  mosquitto_pub -p {settings.MQTT_PORT} "
                    '-t device/test/telemetry -m \'{"battery": 100, "signal": 95, '
                    '"timestamp": "\'$(date -Is)\'"}\'',
                    f"  Services:       .venv/bin/supervisorctl -c {conf} status",
                    f"  Logs:           {paths.log_dir}/",
                    "  Stop:           Ctrl-C here, or `make stop`",
                    "",
                ]
            )
        )


class _Forwarder:
    """Pass a stop signal on to supervisord, which stops the services in reverse order."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.child.poll() is None:
            # SIGINT reaches supervisord from the terminal already; TERM is the one to pass on.
            self.child.send_signal(signal.SIGTERM)


def _health(url: str) -> tuple[bool, list[str]]:
    request = urllib.request.Request(url)  # noqa: S310 (our own URL)
    if settings.MONITORING_API_KEY:
        request.add_header("Authorization", f"Bearer {settings.MONITORING_API_KEY}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status == 200, []
    except urllib.error.HTTPError as exc:
        try:
            checks = json.loads(exc.read())["checks"]
        except (ValueError, KeyError):
            return False, [f"HTTP {exc.code}"]
        return False, [
            f"{name} ({check['error']})" if check.get("error") else name
            for name, check in checks.items()
            if not check.get("ok")
        ]
    except (urllib.error.URLError, OSError):
        return False, []
