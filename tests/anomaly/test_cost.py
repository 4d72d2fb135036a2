"""What scoring costs a process whose tenants have no model: nothing loaded for it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.services import ROOT

PROBE = """
import sys, django
django.setup()
import apps.mqtt.subscriber, apps.mqtt.tasks, apps.anomaly.tasks
from apps.core.tasks.celery_settings import TASK_MODULES
for module in TASK_MODULES:
    __import__(module)
print(sorted(m for m in ("numpy", "sklearn", "scipy") if m in sys.modules))
"""


def test_the_subscriber_and_workers_load_no_numpy_until_a_model_exists():
    # Every worker imports every task module, and the telemetry consumer the scoring path.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "intelliwiz_config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
