import pytest

from apps.core.tasks import celery_settings
from apps.core.tasks.celery_settings import QUEUES, QUEUES_BY_NAME, worker_argv
from intelliwiz_config.celery import app


def test_the_runbooks_five_queues_exist():
    assert [queue.name for queue in QUEUES] == [
        "critical",
        "high_priority",
        "general",
        "ml_training",
        "external_api",
    ]


def test_critical_is_served_before_everything_on_redis_where_zero_is_highest():
    priorities = {queue.name: queue.priority for queue in QUEUES}
    assert priorities["critical"] == 0
    assert priorities["critical"] < priorities["high_priority"] < priorities["general"]
    assert priorities["ml_training"] == max(priorities.values())


def test_routes_send_each_kind_to_the_queue_the_architecture_names():
    routes = celery_settings.TASK_ROUTES
    assert routes["apps.mqtt.tasks.process_device_alerts"]["queue"] == "critical"
    assert routes["apps.mqtt.tasks.process_guard_gps"]["queue"] == "high_priority"
    assert routes["apps.mqtt.tasks.process_device_telemetry"]["queue"] == "general"
    assert routes["apps.mqtt.tasks.publish_device_command"]["queue"] == "external_api"
    for route in routes.values():
        assert route["priority"] == QUEUES_BY_NAME[route["queue"]].priority


def test_the_celery_app_uses_the_one_source_of_routes_and_safe_delivery():
    conf = app.conf
    assert conf.task_routes == celery_settings.TASK_ROUTES
    assert [queue.name for queue in conf.task_queues] == [queue.name for queue in QUEUES]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.broker_url.endswith("/0")


def test_worker_command_line_is_derived_from_the_queue_spec():
    spec = QUEUES_BY_NAME["general"]
    argv = worker_argv("general")
    assert argv[:4] == ["celery", "-A", "intelliwiz_config", "worker"]
    assert argv[argv.index("--queues") + 1] == "general"
    assert argv[argv.index("--hostname") + 1] == "general@%h"
    assert argv[argv.index("--concurrency") + 1] == str(spec.concurrency)
    assert argv[argv.index("--prefetch-multiplier") + 1] == str(spec.prefetch_multiplier)
    assert argv[argv.index("--time-limit") + 1] == str(spec.time_limit)
    assert argv[argv.index("--max-memory-per-child") + 1] == str(spec.max_memory_per_child)


def test_an_unknown_queue_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match=r"unknown queue 'urgent'; known queues: critical, "):
        worker_argv("urgent")


def test_every_routed_task_exists_and_every_task_is_routed():
    app.loader.import_default_modules()
    ours = {name for name in app.tasks if not name.startswith("celery.")}
    assert set(celery_settings.TASK_ROUTES) <= ours
    assert ours - set(celery_settings.TASK_ROUTES) == set(celery_settings.RENAMED_TASKS)


def test_a_task_name_starts_with_the_module_that_defines_it():
    # The worker imports exactly these modules (TASK_MODULES), so a wrong one loses the task.
    app.loader.import_default_modules()
    for name in celery_settings.TASK_QUEUES:
        assert app.tasks[name].__module__ == name.rpartition(".")[0], name


@pytest.mark.django_db(transaction=True)
def test_a_task_queued_under_its_former_name_still_runs(all_queue_workers, redis_client):
    from datetime import timedelta

    from django.utils import timezone

    from apps.core.models import ProcessedMessage
    from tests.services import wait_for

    former = "apps.mqtt.tasks.prune_processed_messages"
    assert celery_settings.RENAMED_TASKS[former] == celery_settings.PRUNE_PROCESSED_MESSAGES
    stale = ProcessedMessage.objects.create(key="device/d/telemetry#1", kind="telemetry")
    ProcessedMessage.objects.filter(pk=stale.pk).update(
        processed_at=timezone.now() - timedelta(days=365)
    )
    app.send_task(former, queue="general")
    wait_for(
        lambda: not ProcessedMessage.objects.filter(pk=stale.pk).exists(),
        timeout=30,
        what="the task queued under its former name to prune the stale key",
    )


def test_the_telemetry_and_training_pools_take_the_cpu_only_when_the_alert_path_leaves_it(
    all_queue_workers,
):
    import os

    import psutil

    for queue, service in zip(QUEUES, all_queue_workers, strict=True):
        worker = psutil.Process(service.pid)
        pool = [worker, *worker.children(recursive=True)]
        expected = os.SCHED_IDLE if queue.idle else os.SCHED_OTHER
        assert {os.sched_getscheduler(p.pid) for p in pool} == {expected}, queue.name
        assert {p.nice() for p in pool} == {psutil.Process().nice() + queue.nice}, queue.name
    assert QUEUES_BY_NAME["general"].idle
    assert not QUEUES_BY_NAME["critical"].idle
