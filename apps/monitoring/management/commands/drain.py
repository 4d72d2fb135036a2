"""Stop intake and wait until the queues are empty: the first step of a graceful shutdown.

    manage.py drain [--timeout SECONDS] [--include-ml]
    manage.py drain --resume

Subscribers hand on what they hold, then leave the broker; their persistent sessions make the
broker keep every new device message until intake resumes.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core import intake_status
from apps.core.redis_client import state_redis
from apps.core.tasks.celery_settings import ML_TRAINING
from apps.monitoring import bus_state

PROGRESS_EVERY_SECONDS = 2.0


class Command(BaseCommand):
    help = "Pause MQTT intake and wait, with progress, until the task queues are empty."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
        parser.add_argument(
            "--include-ml",
            action="store_true",
            help="also wait for ml_training (its tasks may run for hours)",
        )
        parser.add_argument("--resume", action="store_true", help="resume intake and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        client = state_redis()
        if options["resume"]:
            intake_status.resume_intake(client)
            self.stdout.write("Intake resumed: subscribers reconnect within a second or two.")
            return

        intake_status.pause_intake(client)
        self.stdout.write("Intake paused; waiting for subscribers to hand on what they hold …")
        started = time.monotonic()
        deadline = started + options["timeout"]
        while any(sub.connected for sub in intake_status.read_statuses(client)):
            if time.monotonic() > deadline:
                raise CommandError("a subscriber did not pause in time; is it stuck? see its log")
            time.sleep(0.5)

        skip = set() if options["include_ml"] else {ML_TRAINING.name}
        first: int | None = None
        while True:
            waiting = sum(q.depth for q in bus_state.queue_stats(client) if q.name not in skip)
            unacked = bus_state.unacked_by_queue(client)
            running = sum(n for queue, n in unacked.items() if queue not in skip)
            pending = waiting + running
            first = pending if first is None else first
            if pending == 0:
                break
            if time.monotonic() > deadline:
                raise CommandError(
                    f"still {waiting} waiting and {running} unacknowledged after "
                    f"{options['timeout']:.0f} s; are the workers running? "
                    "(manage.py bus_status). Intake stays paused: manage.py drain --resume"
                )
            self.stdout.write(f"  {waiting:>7} waiting, {running:>4} running or prefetched …")
            time.sleep(PROGRESS_EVERY_SECONDS)

        elapsed = time.monotonic() - started
        note = "" if options["include_ml"] else " (ml_training not waited for; --include-ml)"
        self.stdout.write(self.style.SUCCESS(f"Drained {first} tasks in {elapsed:.0f} s{note}."))
        self.stdout.write(
            "Intake stays paused; device messages wait in the broker. "
            "Resume with: manage.py drain --resume"
        )
