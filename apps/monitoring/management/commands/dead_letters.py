"""Inspect, replay and purge dead letters.

manage.py dead_letters list [--reason R] [--limit N]
manage.py dead_letters show ID
manage.py dead_letters replay ID [ID …] | --reason R | --all
manage.py dead_letters purge --older-than DAYS | --all
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, QuerySet
from django.utils import timezone

from apps.core.models import DeadLetter
from apps.mqtt.replay import replay


class Command(BaseCommand):
    help = "List, show, replay and purge dead-lettered messages."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="newest first, with a count per reason")
        listing.add_argument("--reason")
        listing.add_argument("--limit", type=int, default=50)
        show = actions.add_parser("show", help="one dead letter in full")
        show.add_argument("id", type=int)
        again = actions.add_parser("replay", help="run messages through intake again")
        again.add_argument("ids", type=int, nargs="*")
        again.add_argument("--reason")
        again.add_argument("--all", action="store_true")
        purge = actions.add_parser("purge", help="delete dead letters")
        purge.add_argument("--older-than", type=int, metavar="DAYS")
        purge.add_argument("--all", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _list(self, options: dict[str, Any]) -> None:
        letters = DeadLetter.objects.all()
        if options["reason"]:
            letters = letters.filter(reason=options["reason"])
        counts = letters.values("reason").annotate(n=Count("id")).order_by("-n")
        if not counts:
            self.stdout.write("No dead letters.")
            return
        self.stdout.write(
            "By reason: " + ", ".join(f"{row['reason']} {row['n']}" for row in counts)
        )
        for letter in letters[: options["limit"]]:
            replayed = " (replayed)" if letter.replayed_at else ""
            self.stdout.write(
                f"{letter.pk:>6}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.stage:<10} "
                f"{letter.reason:<16} {letter.topic}  {letter.detail[:80]}{replayed}"
            )

    def _show(self, options: dict[str, Any]) -> None:
        try:
            letter = DeadLetter.objects.get(pk=options["id"])
        except DeadLetter.DoesNotExist:
            raise CommandError(f"no dead letter {options['id']}") from None
        truncated = " (first 4 KiB kept)" if letter.payload_truncated else ""
        for label, value in [
            ("id", letter.pk),
            ("stage", letter.stage),
            ("reason", letter.reason),
            ("detail", letter.detail),
            ("topic", letter.topic),
            ("received", letter.received_at.isoformat()),
            ("dead-lettered", letter.created_at.isoformat()),
            ("replayed", letter.replayed_at.isoformat() if letter.replayed_at else "no"),
            ("payload", f"{letter.payload_size} bytes{truncated}"),
        ]:
            self.stdout.write(f"{label:>14}: {value}")
        self.stdout.write(letter.payload_text())

    def _replay(self, options: dict[str, Any]) -> None:
        letters = self._select(options, "replay")
        replayed = failed = 0
        for letter in letters.filter(replayed_at__isnull=True).iterator():
            outcome = replay(letter)
            if outcome is None:
                replayed += 1
                self.stdout.write(f"{letter.pk}: replayed")
            else:
                failed += 1
                self.stdout.write(self.style.WARNING(f"{letter.pk}: still rejected — {outcome}"))
        self.stdout.write(f"Replayed {replayed}, still rejected {failed}.")

    def _purge(self, options: dict[str, Any]) -> None:
        if options["all"]:
            letters = DeadLetter.objects.all()
        elif options["older_than"] is not None:
            cutoff = timezone.now() - timedelta(days=options["older_than"])
            letters = DeadLetter.objects.filter(created_at__lt=cutoff)
        else:
            raise CommandError("say what to purge: --older-than DAYS or --all")
        deleted, _ = letters.delete()
        self.stdout.write(f"Purged {deleted} dead letters.")

    def _select(self, options: dict[str, Any], verb: str) -> QuerySet[DeadLetter]:
        if options["all"]:
            return DeadLetter.objects.all()
        if options["reason"]:
            return DeadLetter.objects.filter(reason=options["reason"])
        if options["ids"]:
            return DeadLetter.objects.filter(pk__in=options["ids"])
        raise CommandError(f"say what to {verb}: dead letter ids, --reason R or --all")
