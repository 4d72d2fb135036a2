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
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from apps.monitoring import stack
from apps.noc.operators import ensure_demo_operator

STARTUP_DEADLINE_SECONDS = 90
ERASE_TO_END = "\x1b[K"  # of the terminal line: what a longer line before left there


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
        progress = Progress(self.stdout)
        while supervisord.poll() is None:
            elapsed = time.monotonic() - started
            healthy, down, total = _health(url)
            if healthy:
                progress.done(self.style.SUCCESS(f"Stack is healthy after {elapsed:.0f} s."))
                return
            if elapsed > STARTUP_DEADLINE_SECONDS:
                progress.done(
                    self.style.ERROR(
                        f"Not healthy after {STARTUP_DEADLINE_SECONDS} s; still down: "
                        f"{_described(down) or 'the web server'}. Look in the logs under "
                        f"{settings.VAR_DIR}/log/ and at `make status`."
                    )
                )
                return
            progress.show(waiting_line([name for name, _error in down], total))
            time.sleep(1)
        progress.done()  # supervisord exited first; what it said is in its log

    def _print_banner(self, username: str, password: str, paths: stack.StackPaths) -> None:
        base = f"http://localhost:{settings.HTTP_PORT}"
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
                    "  Services:       make status; one at a time: .venv/bin/python manage.py "
                    "stackctl restart celery@general",
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


def waiting_line(waiting: list[str], total: int, width: int = 72) -> str:
    """One short line naming what start-up still waits for, the names cut to fit `width`:
    "waiting for 3 of 10: workers:general, mqtt_subscriber, …"."""
    if not total:
        return "waiting for the web server (daphne) …"
    head = f"waiting for {len(waiting)} of {total}: "
    shown: list[str] = []
    for name in waiting:
        if len(head) + len(", ".join([*shown, name, "…"])) > width:
            return head + ", ".join([*shown, "…"])
        shown.append(name)
    return head + ", ".join(shown)


def _described(down: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name} ({error})" if error else name for name, error in down)


class Progress:
    """Start-up progress on one line: rewritten in place on a terminal, and printed again only
    when it changes otherwise (a log file gets one line per change, not one per second)."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.in_place = out.isatty()
        self.last = ""

    def show(self, line: str) -> None:
        if line == self.last:
            return
        if self.in_place:
            self.out.write(f"\r{line}{ERASE_TO_END}", ending="")
            self.out.flush()
        else:
            self.out.write(line)
        self.last = line

    def done(self, line: str = "") -> None:
        """End the progress: its line is replaced by `line` on a terminal, followed by it in a
        log."""
        if self.in_place and self.last:
            self.out.write(f"\r{ERASE_TO_END}", ending="")
            self.last = ""
        if line:
            self.out.write(line)


def _health(url: str) -> tuple[bool, list[tuple[str, str]], int]:
    """Healthy or not, the failing checks with their errors, and how many checks there are
    (0: no answer yet)."""
    request = urllib.request.Request(url)  # noqa: S310 (our own URL)
    if settings.MONITORING_API_KEY:
        request.add_header("Authorization", f"Bearer {settings.MONITORING_API_KEY}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status == 200, [], 0
    except urllib.error.HTTPError as exc:
        try:
            checks = json.loads(exc.read())["checks"]
        except (ValueError, KeyError):
            return False, [(f"HTTP {exc.code}", "")], 1
        down = [
            (name, check.get("error") or "")
            for name, check in checks.items()
            if not check.get("ok")
        ]
        return False, down, len(checks)
    except (urllib.error.URLError, OSError):
        return False, [], 0
