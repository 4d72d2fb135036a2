"""The general pool runs with the collector set by core/gc_tuning.py; the others do not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from apps.core import gc_tuning
from tests.services import ROOT

# A fresh interpreter: what the signal does to the collector must not touch this test session.
# It plays a worker consuming QUEUE at its start, then forks as the pool does.
PROBE = textwrap.dedent(
    """
    import gc, json, os, sys
    from types import SimpleNamespace
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "intelliwiz_config.settings")
    import django
    django.setup()
    from celery import signals
    from intelliwiz_config.celery import app

    queue = sys.argv[1]
    class Worker:  # what the handler reads of celery's WorkController (a signal sender)
        app = SimpleNamespace(amqp=SimpleNamespace(
            queues=SimpleNamespace(consume_from={queue: object()})))
    worker = Worker()
    before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
    signals.worker_init.send(sender=worker)
    reader, writer = os.pipe()
    if os.fork() == 0:  # a pool child
        class Node:
            pass
        first, second = Node(), Node()
        first.other, second.other = second, first  # a cycle made in the child
        del first, second
        child = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                 "freed": gc.collect()}
        os.write(writer, json.dumps(child).encode())
        os._exit(0)
    os.wait()
    print(json.dumps({"before": before, "child": json.loads(os.read(reader, 4096))}))
    """
)


def probe(queue: str) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, queue],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_a_general_pool_child_inherits_a_frozen_heap_and_still_collects_its_cycles() -> None:
    found = probe("general")
    assert found["before"] == {"threshold": [700, 10, 10], "frozen": 0}, "CPython's defaults"
    child = found["child"]
    assert child["threshold"] == [gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS]
    assert child["frozen"] > 10_000, "the start-up heap: Django, Celery"
    assert child["freed"] >= 2, "a cycle made in the child is still collected"


@pytest.mark.parametrize("queue", ["critical", "ml_training"])
def test_the_pools_not_measured_keep_cpythons_collector(queue: str) -> None:
    child = probe(queue)["child"]
    assert child["threshold"] == [700, 10, 10]
    assert child["frozen"] == 0
