"""`make run`'s start-up progress: one short line, in place on a terminal, per change in a log."""

from __future__ import annotations

import io

from django.core.management.base import OutputWrapper

from apps.core.tasks.celery_settings import QUEUES
from apps.monitoring.management.commands.runstack import ERASE_TO_END, Progress, waiting_line

# What health awaits at start-up, as it names it: the subscriber, then each queue's workers.
CHECKS = ["mqtt_subscriber", *(f"workers:{queue.name}" for queue in QUEUES)]
# Three rounds of the start-up loop: the second repeats the first, the third has one left.
ROUNDS = ["waiting for 2 of 10: a, b", "waiting for 2 of 10: a, b", "waiting for 1 of 10: b"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_waiting_line_counts_what_is_awaited_and_names_what_fits_on_one_line():
    assert waiting_line(["mqtt_subscriber"], 10) == "waiting for 1 of 10: mqtt_subscriber"
    long = waiting_line(CHECKS, 10)
    assert long.startswith("waiting for 6 of 10: mqtt_subscriber, workers:critical, ")
    assert long.endswith(", …")
    assert len(long) <= 72
    assert waiting_line([], 0) == "waiting for the web server (daphne) …"


def test_in_a_log_progress_prints_a_line_only_when_it_changes_then_the_ready_line():
    log = io.StringIO()
    progress = Progress(OutputWrapper(log))
    for line in ROUNDS:
        progress.show(line)
    progress.done("Stack is healthy after 9 s.")

    assert log.getvalue().splitlines() == [
        "waiting for 2 of 10: a, b",
        "waiting for 1 of 10: b",
        "Stack is healthy after 9 s.",
    ]


def test_on_a_terminal_progress_rewrites_one_line_in_place_and_the_ready_line_replaces_it():
    terminal = Terminal()
    progress = Progress(OutputWrapper(terminal))
    for line in ROUNDS:
        progress.show(line)
    progress.done("Stack is healthy after 9 s.")

    assert terminal.getvalue() == (
        f"\rwaiting for 2 of 10: a, b{ERASE_TO_END}"
        f"\rwaiting for 1 of 10: b{ERASE_TO_END}"
        f"\r{ERASE_TO_END}Stack is healthy after 9 s.\n"
    )
