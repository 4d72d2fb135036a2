"""The Celery application: `celery -A intelliwiz_config ...` finds it here."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from apps.core import gc_tuning, task_json
from apps.core.tasks.celery_settings import QUEUES_BY_NAME, RENAMED_TASKS, celery_config
from apps.monitoring import celery_hooks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")

task_json.register_codec()  # the JSON codec of task messages, before anything is sent
app = Celery("intelliwiz_config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(celery_config())
celery_hooks.install(app)
# The apps send tasks through `celery.current_app`; let that be this app in every thread.
app.set_default()


def _register_renamed_tasks() -> None:
    """A message queued under a task's former name by an earlier release runs the task it became."""
    for former, current in RENAMED_TASKS.items():
        app.task(name=former, acks_late=True, ignore_result=True)(_forward_to(current))


def _forward_to(name: str) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return app.tasks[name](*args, **kwargs)

    return forward


_register_renamed_tasks()


@signals.worker_init.connect
def _settle_heap(sender: Any, **kwargs: Any) -> None:
    # A worker whose every queue asks for it (QueueSpec.settled_gc), once it loaded the apps and
    # before it forks its pool: the children inherit the frozen heap and the thresholds
    # (core/gc_tuning.py), and share the frozen pages with it until written.
    consumed = set(sender.app.amqp.queues.consume_from)
    specs = [QUEUES_BY_NAME.get(name) for name in consumed]
    if specs and all(spec is not None and spec.settled_gc for spec in specs):
        gc_tuning.settle()
