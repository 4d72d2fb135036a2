"""`supervisorctl` for the `make run` stack, wherever VAR_DIR (environment or .env) puts it.

manage.py stackctl status
manage.py stackctl restart celery:general      (or the runbook's unit name, celery@general)
manage.py stackctl stop mqtt_subscriber        (or mqtt-subscriber)
manage.py stackctl shutdown

A name that is neither a program nor an alias is refused before supervisorctl runs, with the
list of valid names, rather than as one "no such process" per name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.monitoring import stack

# supervisorctl actions whose arguments name programs; `signal` takes the signal first, `tail`
# options and a stream, and the starting and stopping ones `all`.
PROGRAM_ACTIONS = frozenset(
    {"start", "stop", "restart", "status", "pid", "signal", "tail", "clear"}
)
NOT_PROGRAMS = frozenset({"all", "stdout", "stderr"})


class Command(BaseCommand):
    help = (
        "Control the services of a running `make run` stack (supervisorctl); the runbook's "
        "unit names (celery@general, mqtt-subscriber, …) work as aliases."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs="*", help="supervisorctl arguments, e.g. status")

    def handle(self, *args: str, **options: Any) -> None:
        paths = stack.StackPaths(Path(settings.VAR_DIR))
        action, *words = args or ("status",)
        if action in PROGRAM_ACTIONS and words:
            words = resolve(action, words, paths)
        if stack.supervisor_running(paths) is None:
            raise CommandError(
                f"no stack is running from {paths.var_dir}; start it with `make run`"
            )
        supervisorctl = stack.venv_executable("supervisorctl")
        sys.stdout.flush()
        os.execv(  # noqa: S606  (hands the terminal to supervisorctl)
            supervisorctl, [supervisorctl, "-c", str(paths.supervisor_conf), action, *words]
        )


def resolve(action: str, words: list[str], paths: stack.StackPaths) -> list[str]:
    """`words` with each alias replaced by supervisor's name; CommandError naming every valid
    name if one is neither."""
    try:
        names = stack.control_names(stack.programs(paths))
    except stack.StackError as exc:
        raise CommandError(str(exc)) from None
    by_alias = {alias: name for name, aliases in names.items() for alias in aliases}
    resolved: list[str] = []
    unknown: list[str] = []
    for index, word in enumerate(words):
        if word.startswith("-") or word in NOT_PROGRAMS or (action == "signal" and index == 0):
            resolved.append(word)
        elif word in names or word in by_alias:
            resolved.append(by_alias.get(word, word))
        else:
            unknown.append(word)
    if unknown:
        listing = "\n".join(
            f"  {name}" + (f"  (or {', '.join(aliases)})" if aliases else "")
            for name, aliases in names.items()
        )
        raise CommandError(
            f"no such program: {', '.join(unknown)}. The stack's programs "
            f"(and the runbook's names for them):\n{listing}"
        )
    return resolved
