"""Celery's processes run with the collector set by core/gc_tuning.py, and still free cycles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from apps.core import gc_tuning
from tests.services import ROOT

# A fresh interpreter: what the signal does to the collector must not touch this test session.
PROBE = textwrap.dedent(
    """
    import gc, json, os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
    import django
    django.setup()
    from celery import signals
    import intelliwiz_config.celery  # noqa: F401  (connects the handlers)

    before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
    signals.worker_process_init.send(sender=None)  # what a pool child gets once forked
    after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}

    class Node:
        pass

    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle made after start-up
    del first, second
    print(json.dumps({"before": before, "after": after, "freed": gc.collect()}))
    """
)


def test_a_pool_child_freezes_its_start_up_heap_and_still_collects_later_cycles() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["before"]["threshold"][0] == 700, "CPython's default before the signal"
    assert probe["before"]["frozen"] == 0
    assert probe["after"]["threshold"] == [gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS]
    assert probe["after"]["frozen"] > 10_000, "the start-up heap (Django, Celery) is frozen"
    assert probe["freed"] >= 2, "a cycle made after settle() is still collected"
