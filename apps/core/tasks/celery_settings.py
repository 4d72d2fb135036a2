"""The one source of truth for Celery queues, task routes, priorities and worker settings.

Worker command lines (`make run`, systemd's `celery@.service`), the Celery app's routing and
imports, the beat schedule, health checks and the docs all derive from the constants here; the
MQTT topic table (apps/mqtt/topics.py) names each topic kind's task from the names below. Adding
a queue or a task means editing this file; see docs/architecture.md ("Recipes").

With the Redis transport Celery priority 0 is the *highest* and 9 the lowest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

CELERY_APP: Final = "intelliwiz_config"

# Priorities on the Redis transport: lower number = served first.
PRIORITY_HIGHEST: Final = 0
PRIORITY_HIGH: Final = 2
PRIORITY_NORMAL: Final = 5
PRIORITY_LOWEST: Final = 9


@dataclass(frozen=True)
class QueueSpec:
    """A Celery queue and the settings of the worker pool that consumes it."""

    name: str
    purpose: str
    priority: int
    concurrency: int
    prefetch_multiplier: int
    soft_time_limit: int  # seconds; the task gets SoftTimeLimitExceeded
    time_limit: int  # seconds; the child process is killed
    max_memory_per_child: int  # KiB; the child is replaced after a task that exceeds it
    max_tasks_per_child: int = 10_000
    # Its batches' transactions take the database writer before any other queue's, which give
    # it up to them mid-batch (apps/core/write_priority.py).
    urgent: bool = False
    # The pool's CPU priority (`nice`, 0 to 19; higher yields the CPU to lower). Positive only,
    # so no privilege is needed: the other pools make way for the critical one.
    nice: int = 0
    # Run under SCHED_IDLE: the CPU only when no normal process wants it. A nice value only
    # weighs shares; an alert's processes (urgent subscriber, critical worker, Redis, Daphne)
    # waking on a core busy with telemetry still waited for it. Also needs no privilege.
    idle: bool = False
    # The pool's garbage collector settled for batches (apps/core/gc_tuning.py): measured on
    # the general pool only; the others keep CPython's defaults until measured.
    settled_gc: bool = False


CRITICAL = QueueSpec(
    name="critical",
    purpose="device alerts (panic, SOS, intrusion, fire, medical)",
    priority=PRIORITY_HIGHEST,
    concurrency=2,
    prefetch_multiplier=1,
    soft_time_limit=30,
    time_limit=60,
    max_memory_per_child=200_000,
    urgent=True,
)
HIGH_PRIORITY = QueueSpec(
    name="high_priority",
    purpose="guard GPS and geofence checks",
    priority=PRIORITY_HIGH,
    concurrency=2,
    prefetch_multiplier=2,
    soft_time_limit=30,
    time_limit=60,
    max_memory_per_child=200_000,
    nice=2,
)
GENERAL = QueueSpec(
    name="general",
    purpose="telemetry, sensor readings, system health, housekeeping",
    priority=PRIORITY_NORMAL,
    concurrency=2,
    prefetch_multiplier=4,
    soft_time_limit=120,
    time_limit=180,
    max_memory_per_child=300_000,
    nice=5,
    idle=True,
    settled_gc=True,
)
ML_TRAINING = QueueSpec(
    name="ml_training",
    purpose="model training (tasks may run for hours)",
    priority=PRIORITY_LOWEST,
    concurrency=1,
    prefetch_multiplier=1,
    soft_time_limit=4 * 3600,
    time_limit=4 * 3600 + 300,
    max_memory_per_child=2_000_000,
    max_tasks_per_child=1,
    nice=10,
    idle=True,
)
EXTERNAL_API = QueueSpec(
    name="external_api",
    purpose="every outbound call: MQTT downlink, webhooks, email",
    priority=PRIORITY_NORMAL,
    concurrency=2,
    prefetch_multiplier=4,
    soft_time_limit=60,
    time_limit=90,
    max_memory_per_child=200_000,
    nice=5,
)

QUEUES: Final[tuple[QueueSpec, ...]] = (CRITICAL, HIGH_PRIORITY, GENERAL, ML_TRAINING, EXTERNAL_API)
QUEUES_BY_NAME: Final = {queue.name: queue for queue in QUEUES}
DEFAULT_QUEUE: Final = GENERAL

# Task names. Each starts with the module that defines the task: the worker imports exactly
# those modules (TASK_MODULES), so a task is found by its name alone, with no autodiscovery.
PROCESS_DEVICE_ALERTS: Final = "apps.mqtt.tasks.process_device_alerts"
PROCESS_GUARD_GPS: Final = "apps.mqtt.tasks.process_guard_gps"
PROCESS_DEVICE_TELEMETRY: Final = "apps.mqtt.tasks.process_device_telemetry"
PROCESS_SENSOR_READINGS: Final = "apps.mqtt.tasks.process_sensor_readings"
PROCESS_SYSTEM_HEALTH: Final = "apps.mqtt.tasks.process_system_health"
PROCESS_COMMAND_ACKS: Final = "apps.mqtt.tasks.process_command_acks"
# Tasks whose every effect is guarded by the idempotency ledger: running one twice is harmless.
IDEMPOTENT_TASKS: Final = frozenset(
    {
        PROCESS_DEVICE_ALERTS,
        PROCESS_GUARD_GPS,
        PROCESS_DEVICE_TELEMETRY,
        PROCESS_SENSOR_READINGS,
        PROCESS_SYSTEM_HEALTH,
        PROCESS_COMMAND_ACKS,
    }
)
PUBLISH_DEVICE_COMMAND: Final = "apps.mqtt.tasks.publish_device_command"
# A stored command's publish, and the sweep that expires commands and sends those left waiting.
SEND_DEVICE_COMMAND: Final = "apps.mqtt.commands.send_device_command"
SWEEP_DEVICE_COMMANDS: Final = "apps.mqtt.commands.sweep_device_commands"
DETECT_OFFLINE_DEVICES: Final = "apps.mqtt.presence.detect_offline_devices"
PRUNE_PROCESSED_MESSAGES: Final = "apps.core.tasks.ledger.prune_processed_messages"
PRUNE_DEAD_LETTERS: Final = "apps.core.tasks.housekeeping.prune_dead_letters"
RESEND_BROADCASTS: Final = "apps.core.tasks.housekeeping.resend_broadcasts"
PRUNE_READINGS: Final = "apps.devices.tasks.prune_readings"
PRUNE_CLOSED_ALERTS: Final = "apps.alerts.tasks.prune_closed_alerts"
PRUNE_EXPIRED_TOKENS: Final = "apps.noc.tasks.prune_expired_tokens"
# Notifications of alerts (apps/notifications): fan-out with storm control, one delivery
# (webhook or e-mail) with its retries, and the digests of storm windows that have ended.
DISPATCH_NOTIFICATIONS: Final = "apps.notifications.tasks.dispatch_notifications"
DELIVER_NOTIFICATION: Final = "apps.notifications.tasks.deliver_notification"
FLUSH_NOTIFICATION_DIGESTS: Final = "apps.notifications.tasks.flush_notification_digests"
# Runs for up to ML_TRAINING's time limits; acks_late=False: at most once (see the note below).
TRAIN_ANOMALY_MODELS: Final = "apps.anomaly.tasks.train_anomaly_models"
# The health canary: a tiny task sent to each queue at top priority; the worker that runs it
# records when, so health can tell a queue that is consumed from one whose worker merely answers.
CANARY_TASK: Final = "apps.monitoring.tasks.canary"

# Task name -> queue. The task's priority is its queue's unless it says otherwise.
TASK_QUEUES: Final[dict[str, QueueSpec]] = {
    PROCESS_DEVICE_ALERTS: CRITICAL,
    PROCESS_GUARD_GPS: HIGH_PRIORITY,
    PROCESS_DEVICE_TELEMETRY: GENERAL,
    PROCESS_SENSOR_READINGS: GENERAL,
    PROCESS_SYSTEM_HEALTH: GENERAL,
    PROCESS_COMMAND_ACKS: GENERAL,
    DETECT_OFFLINE_DEVICES: GENERAL,
    PRUNE_PROCESSED_MESSAGES: GENERAL,
    PRUNE_DEAD_LETTERS: GENERAL,
    RESEND_BROADCASTS: GENERAL,
    PRUNE_READINGS: GENERAL,
    PRUNE_CLOSED_ALERTS: GENERAL,
    PRUNE_EXPIRED_TOKENS: GENERAL,
    # Default route only: beat sends one canary to *every* queue with queue= (BEAT_SCHEDULE).
    CANARY_TASK: GENERAL,
    PUBLISH_DEVICE_COMMAND: EXTERNAL_API,
    DISPATCH_NOTIFICATIONS: EXTERNAL_API,
    DELIVER_NOTIFICATION: EXTERNAL_API,
    FLUSH_NOTIFICATION_DIGESTS: EXTERNAL_API,
    TRAIN_ANOMALY_MODELS: ML_TRAINING,
    SEND_DEVICE_COMMAND: EXTERNAL_API,
    SWEEP_DEVICE_COMMANDS: EXTERNAL_API,
}
TASK_MODULES: Final = sorted({name.rpartition(".")[0] for name in TASK_QUEUES})

# Former name -> current name of each task that moved. Messages queued under the former name by
# an earlier release still run after an upgrade (intelliwiz_config/celery.py registers them).
RENAMED_TASKS: Final[dict[str, str]] = {
    "apps.devices.tasks.detect_offline_devices": DETECT_OFFLINE_DEVICES,
    "apps.mqtt.tasks.prune_processed_messages": PRUNE_PROCESSED_MESSAGES,
}

TASK_ROUTES: Final[dict[str, dict[str, Any]]] = {
    task: {"queue": queue.name, "priority": queue.priority} for task, queue in TASK_QUEUES.items()
}

# Broker transport: priorities 0..9 on Redis are emulated with one list per step. A message whose
# worker died without acknowledging it is redelivered after the visibility timeout (or at once
# with `manage.py requeue`), so the timeout must outlast the longest acks_late task: twice the
# longest hard time limit below ml_training. Training tasks run for hours and must therefore
# be acks_late=False (at most once; beat starts the next run) or they would be run twice.
VISIBILITY_TIMEOUT_SECONDS: Final = 2 * max(q.time_limit for q in QUEUES if q is not ML_TRAINING)
# A Redis that stops answering without refusing (frozen, a dead link) must fail a call, not hang
# it: the subscriber then holds its messages unacknowledged and keeps its MQTT session alive.
# Above the 1 s that a worker's BRPOP blocks for.
REDIS_SOCKET_TIMEOUT_SECONDS: Final = 5
BROKER_TRANSPORT_OPTIONS: Final[dict[str, Any]] = {
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
    "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
}


def broker_list_keys(queue_name: str) -> list[str]:
    """The Redis lists holding a queue's waiting messages, one per priority step.

    kombu's Redis transport (Channel._q_for_pri) keeps step 0 under the bare queue name and
    step n under `<queue><sep><n>`, with `sep` and the steps from BROKER_TRANSPORT_OPTIONS.
    """
    sep = BROKER_TRANSPORT_OPTIONS["sep"]
    steps: list[int] = BROKER_TRANSPORT_OPTIONS["priority_steps"]
    return [queue_name if step == 0 else f"{queue_name}{sep}{step}" for step in steps]


CANARY_INTERVAL_SECONDS: Final = 15


def canary_options(queue_name: str) -> dict[str, Any]:
    """apply_async options that put a canary at the head of `queue_name`."""
    return {"queue": queue_name, "priority": PRIORITY_HIGHEST}


# Periodic tasks run by Celery beat: name -> task, interval in seconds, arguments, options.
BEAT_SCHEDULE: Final[dict[str, dict[str, Any]]] = {
    "detect-offline-devices": {
        "task": DETECT_OFFLINE_DEVICES,
        "schedule": 60.0,
    },
    # Device commands past their TTL expire; those left waiting are sent (mqtt/commands.py).
    "sweep-device-commands": {"task": SWEEP_DEVICE_COMMANDS, "schedule": 10.0},
    # NOC events a worker committed but died before sending (core/outbox.py).
    "resend-broadcasts": {"task": RESEND_BROADCASTS, "schedule": 15.0},
    "prune-processed-messages": {
        "task": PRUNE_PROCESSED_MESSAGES,
        "schedule": 3600.0,
    },
    # Retention (DEAD_LETTER_RETENTION_DAYS, READING_RETENTION_DAYS, ALERT_RETENTION_DAYS):
    # hourly, so each run deletes about an hour's worth, in small chunks.
    "prune-dead-letters": {"task": PRUNE_DEAD_LETTERS, "schedule": 3600.0},
    "prune-readings": {"task": PRUNE_READINGS, "schedule": 3600.0},
    "prune-closed-alerts": {"task": PRUNE_CLOSED_ALERTS, "schedule": 3600.0},
    # Digests of the notifications storm control folded, once each window has ended.
    "flush-notification-digests": {"task": FLUSH_NOTIFICATION_DIGESTS, "schedule": 15.0},
    # Every refresh records its new token (apps/noc/auth.py): forget them once expired.
    "prune-expired-tokens": {"task": PRUNE_EXPIRED_TOKENS, "schedule": 3600.0},
    # Every tenant's anomaly models, weekly, from the readings of ANOMALY_TRAINING_DAYS.
    "train-anomaly-models": {"task": TRAIN_ANOMALY_MODELS, "schedule": 7 * 86400.0},
    **{
        f"health-canary-{queue.name}": {
            "task": CANARY_TASK,
            "schedule": CANARY_INTERVAL_SECONDS,
            "args": (queue.name,),
            "options": canary_options(queue.name),
        }
        for queue in QUEUES
    },
}


def celery_config() -> dict[str, Any]:
    """Celery settings shared by every process (lower-case Celery names)."""
    from kombu import Queue

    return {
        "task_queues": [Queue(queue.name, routing_key=queue.name) for queue in QUEUES],
        "task_default_queue": DEFAULT_QUEUE.name,
        "task_default_priority": DEFAULT_QUEUE.priority,
        "task_routes": TASK_ROUTES,
        "imports": TASK_MODULES,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Processing tasks never fail outright: run_batch retries, dead-letters, or re-queues
        # through task.retry(). A task killed at its hard time limit is requeued rather than
        # acknowledged (never lost); the soft limit fires first so run_batch can act on a hang.
        "task_acks_on_failure_or_timeout": False,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "broker_transport_options": BROKER_TRANSPORT_OPTIONS,
        "broker_connection_retry_on_startup": True,
        # Puts back the tasks a worker held when Redis went away as soon as it is back, rather
        # than after the visibility timeout (core/tasks/consumer.py).
        "worker_consumer": "apps.core.tasks.consumer:RecoveringConsumer",
        "beat_schedule": BEAT_SCHEDULE,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
    }


def worker_argv(queue_name: str, *, loglevel: str = "INFO") -> list[str]:
    """The `celery worker` command line for the pool that consumes `queue_name`."""
    try:
        queue = QUEUES_BY_NAME[queue_name]
    except KeyError:
        known = ", ".join(QUEUES_BY_NAME)
        raise ValueError(f"unknown queue {queue_name!r}; known queues: {known}") from None
    return [
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "--queues",
        queue.name,
        "--hostname",
        f"{queue.name}@%h",
        "--concurrency",
        str(queue.concurrency),
        "--prefetch-multiplier",
        str(queue.prefetch_multiplier),
        "--soft-time-limit",
        str(queue.soft_time_limit),
        "--time-limit",
        str(queue.time_limit),
        "--max-memory-per-child",
        str(queue.max_memory_per_child),
        "--max-tasks-per-child",
        str(queue.max_tasks_per_child),
        "--optimization",
        "fair",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
    ]


def beat_argv(schedule_path: str, *, loglevel: str = "INFO") -> list[str]:
    return ["celery", "-A", CELERY_APP, "beat", "--schedule", schedule_path, "--loglevel", loglevel]
