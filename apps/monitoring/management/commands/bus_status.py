"""One screen with the state of the bus: queues, workers, subscribers, breakers, dead letters."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Count

from apps.core import intake_status
from apps.core.models import DeadLetter
from apps.core.redis_client import state_redis
from apps.monitoring import bus_state


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago"


class Command(BaseCommand):
    help = "Show queues and depths, workers, subscribers, circuit breakers and dead letters."

    def handle(self, *args: Any, **options: Any) -> None:
        client = state_redis()
        now = time.time()
        write = self.stdout.write

        write("Queues                 waiting   oldest")
        for queue in bus_state.queue_stats(client):
            oldest = f"{queue.oldest_age_s:.0f} s" if queue.depth else "-"
            write(f"  {queue.name:<18} {queue.depth:>9}   {oldest}")
        write(f"  unacknowledged (running or prefetched): {bus_state.unacked_count(client)}")

        write("Workers")
        heartbeats = sorted(
            bus_state.read_worker_heartbeats(client), key=lambda h: (h.queue, h.hostname)
        )
        if not heartbeats:
            write(self.style.ERROR("  none has reported: are the Celery workers running?"))
        for beat in heartbeats:
            node = f"  {beat.queue:<18} {beat.hostname:<24}"
            if beat.up:
                write(f"{node} {self.style.SUCCESS('up')}  (heartbeat {_age(now - beat.seen_at)})")
            elif beat.stopped:
                when = _age(now - beat.seen_at) if beat.seen_at else "when unknown"
                write(f"{node} {self.style.WARNING('stopped')}  (cleanly, {when})")
            else:
                seen = _age(now - beat.seen_at)
                write(
                    f"{node} {self.style.ERROR('DOWN')}  (last heartbeat {seen}: crashed or hung)"
                )

        write("MQTT subscribers")
        if intake_status.intake_paused(client):
            write(
                self.style.WARNING(
                    "  intake PAUSED by an operator; resume: manage.py drain --resume"
                )
            )
        subscribers = intake_status.read_statuses(client)
        if not subscribers:
            write(
                self.style.ERROR(
                    f"  none has reported in the last {intake_status.STATUS_TTL_SECONDS} s: "
                    "is the subscriber running?"
                )
            )
        for sub in subscribers:
            state = "paused" if sub.paused else ("connected" if sub.connected else "DISCONNECTED")
            write(f"  {sub.client_id:<30} {state:<13} last message {_age(sub.last_message_age)}")

        write("Circuit breakers")
        breakers = bus_state.breakers(client)
        if not breakers:
            write("  all closed (none has recorded a failure)")
        for service, breaker in breakers.items():
            if breaker is None:
                write(self.style.WARNING(f"  {service:<18} unreadable record"))
            else:
                line = f"  {service:<18} {breaker.state:<10} failures {breaker.failures}"
                write(self.style.ERROR(line) if breaker.state != "closed" else line)

        write("Dead letters")
        counts = list(
            DeadLetter.objects.filter(replayed_at__isnull=True)
            .values("reason")
            .annotate(n=Count("id"))
            .order_by("-n")
        )
        if not counts:
            write("  none")
        else:
            total = sum(row["n"] for row in counts)
            reasons = ", ".join(f"{row['reason']} {row['n']}" for row in counts)
            write(f"  {total} not replayed ({reasons}); inspect: manage.py dead_letters list")
