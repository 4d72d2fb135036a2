"""Put tasks that workers took but never acknowledged back on their queues, now.

After an emergency shutdown (`pkill -9 -f celery`) such tasks would come back by themselves only
after the broker's visibility timeout. Run this with the workers stopped.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core import intake_status
from apps.core.redis_client import state_redis
from apps.monitoring.bus_state import read_worker_heartbeats


class Command(BaseCommand):
    help = "Requeue unacknowledged tasks left behind by killed workers (workers stopped)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="requeue even though workers report as up (they may run a task twice; "
            "idempotency keys keep its effects single)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alive = [beat for beat in read_worker_heartbeats(state_redis()) if beat.up]
        if alive and not options["force"]:
            names = ", ".join(sorted({beat.hostname for beat in alive}))
            raise CommandError(
                f"workers are up ({names}): their unacknowledged tasks are in progress. "
                "Stop the workers first, or pass --force."
            )
        with current_app.connection_for_write() as connection:
            channel: Any = connection.default_channel
            tags = channel.client.hkeys(channel.unacked_key)
            for number, tag in enumerate(tags, start=1):
                channel.qos.restore_by_tag(tag, leftmost=True)
                if number % 500 == 0:
                    self.stdout.write(f"  {number} of {len(tags)} requeued …")
        # A killed worker may also have held a task it had taken (BRPOP) but not yet recorded
        # as unacknowledged: in no queue and no record. Subscribers hand on their last messages
        # again; their idempotency keys absorb the repeats.
        intake_status.request_send_again(state_redis())
        self.stdout.write(
            f"Requeued {len(tags)} unacknowledged tasks; asked the MQTT subscribers to send "
            "their last messages again (repeats are absorbed)."
        )
