"""The Celery application: `celery -A intelliwiz_config ...` finds it here."""

from __future__ import annotations

import os

from celery import Celery

from apps.core.tasks.celery_settings import celery_config, register_renamed_tasks
from apps.monitoring import celery_hooks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")

app = Celery("intelliwiz_config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(celery_config())
register_renamed_tasks(app)
celery_hooks.install(app)
# The apps send tasks through `celery.current_app`; make it this app in every thread, not only
# the one that imported this module (Daphne runs health checks in worker threads).
app.set_default()
