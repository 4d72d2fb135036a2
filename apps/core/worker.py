"""Start the Celery worker pool of one queue with the command line derived from celery_settings.

    python -m apps.core.worker critical

This is what `make run` (supervisor) and `deploy/systemd/celery@.service` run, so a queue's
concurrency, prefetch, limits and CPU priority (nice) are written once, in
apps/core/tasks/celery_settings.py.
"""

from __future__ import annotations

import os
import shutil
import sys

from apps.core.tasks.celery_settings import QUEUES_BY_NAME, worker_argv


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in QUEUES_BY_NAME:
        known = " | ".join(QUEUES_BY_NAME)
        sys.exit(f"usage: python -m apps.core.worker {{{known}}}")
    # Settings (and so LOG_LEVEL, from the environment or .env) are read by settings.py only.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
    from django.conf import settings

    command = worker_argv(argv[0], loglevel=settings.LOG_LEVEL)
    # Below the critical pool in CPU priority (QueueSpec.nice, .idle); the pool's children
    # inherit both.
    os.nice(QUEUES_BY_NAME[argv[0]].nice)
    if QUEUES_BY_NAME[argv[0]].idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # The celery script that sits next to this interpreter (the project's venv), else PATH.
    sibling = os.path.join(os.path.dirname(sys.executable), "celery")
    executable = sibling if os.path.exists(sibling) else shutil.which("celery")
    if executable is None:
        sys.exit("celery is not installed in this environment; run `make run` or pip install .")
    os.execv(executable, [executable, *command[1:]])  # noqa: S606  (replaces this process)


if __name__ == "__main__":
    main(sys.argv[1:])
