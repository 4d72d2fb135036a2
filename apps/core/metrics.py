"""Every Prometheus metric of the system, declared once.

Processes record into these objects; `/metrics/export/` aggregates every process on the host
(prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR) and adds gauges read from Redis
at scrape time (queue depths, oldest message age, workers per queue, breaker states).
Dashboards and alert rules in deploy/ must only use names declared here; a test checks it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase

# In multiprocess mode each declaration below opens a file in this directory at once.
settings.PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
# settings.py exports PROMETHEUS_MULTIPROC_DIR, but prometheus_client may have been imported
# before the settings were read: choose its value class again, so no process keeps its
# metrics in private memory where no scrape can see them.
values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

# --- MQTT intake (the subscriber) ---------------------------------------------------------

MQTT_MESSAGES_RECEIVED = Counter(
    "mqtt_messages_received_total",
    "MQTT messages received by the subscriber, by topic prefix",
    ["prefix"],
)
MQTT_MESSAGES_REJECTED = Counter(
    "mqtt_messages_rejected_total",
    "MQTT messages rejected before queueing, by reason",
    ["reason"],
)
MQTT_MESSAGES_ENQUEUED = Counter(
    "mqtt_messages_enqueued_total",
    "MQTT messages handed to Celery (acknowledged to the broker afterwards), by queue",
    ["queue"],
)
MQTT_MESSAGES_RETAINED_SKIPPED = Counter(
    "mqtt_messages_retained_skipped_total",
    "Retained messages the broker replayed to the subscriber, skipped (processed when live)",
)
MQTT_MESSAGES_DROPPED = Counter(
    "mqtt_messages_dropped_total",
    "QoS 0 messages the subscriber let go of, by reason (QoS 1 ones stay with the broker)",
    ["reason"],
)
MQTT_MESSAGES_SENT_AGAIN = Counter(
    "mqtt_messages_sent_again_total",
    "Messages the subscriber handed on again after Redis failed or restarted, or a host of its "
    "shared group died (repeats are absorbed by their idempotency keys)",
)
ALERTS_ANNOUNCED = Counter(
    "mqtt_alerts_announced_total",
    "Critical alerts the subscriber sent the NOC as provisional critical_alert events ahead of "
    "their rows (apps/mqtt/announce.py), by outcome: sent, failed (the stored alert follows)",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "dead_letters_total",
    "Messages written to the dead-letter store, by stage and reason",
    ["stage", "reason"],
)
MQTT_SUBSCRIBER_CONNECTED = Gauge(
    "celery_mqtt_subscriber_connected",
    "1 while this subscriber process holds a connection to the MQTT broker",
    ["client_id"],
    multiprocess_mode="livemax",
)
MQTT_SESSIONS_ADOPTED = Counter(
    "mqtt_sessions_adopted_total",
    "Sessions of silent shared-group members adopted by this subscriber, by outcome: drained "
    "(and ended), interrupted (the member took it back, or the connection dropped)",
    ["outcome"],
)
MQTT_BATCH_SIZE = Histogram(
    "mqtt_batch_size",
    "Messages per task flushed by the subscriber, by queue",
    ["queue"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)

# --- Celery tasks -------------------------------------------------------------------------

TASKS_RECEIVED = Counter(
    "celery_tasks_received_total", "Tasks started by a worker", ["task", "queue"]
)
TASKS_SUCCEEDED = Counter(
    "celery_tasks_succeeded_total", "Tasks that finished without error", ["task", "queue"]
)
TASKS_FAILED = Counter(
    "celery_tasks_failed_total", "Tasks that failed for good (dead-lettered)", ["task", "queue"]
)
TASKS_RETRIED = Counter(
    "celery_tasks_retried_total", "Task retries scheduled after an error", ["task", "queue"]
)
TASK_RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Task run time",
    ["task", "queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
MESSAGES_PROCESSED = Counter(
    "bus_messages_processed_total",
    "Device messages stored by the processing tasks, by kind (duplicates excluded)",
    ["kind"],
)
MESSAGES_DUPLICATE = Counter(
    "bus_messages_duplicate_total",
    "Redelivered device messages recognised by their idempotency key and skipped, by kind",
    ["kind"],
)
TRANSACTIONS_PREEMPTED = Counter(
    "bus_transactions_preempted_total",
    "Batch transactions rolled back to let a critical one write first, then run again, by queue",
    ["queue"],
)
END_TO_END_LATENCY = Histogram(
    "bus_end_to_end_latency_seconds",
    "From MQTT receipt by the subscriber to the NOC broadcast, by kind",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(amount)` for each amount, with the same totals: one write to the sum
    and one per bucket touched, instead of two per amount (in multiprocess mode each is a locked
    write to a memory-mapped file; per message, 4 % of a worker's batch).
    tests/monitoring/test_metrics.py holds it equal to `observe`, as prometheus_client changes."""
    if not amounts:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    histogram._sum.inc(sum(amounts))
    # `observe` counts an amount in the first bucket whose upper bound is >= it.
    for index, count in Tally(bisect_left(histogram._upper_bounds, a) for a in amounts).items():
        histogram._buckets[index].inc(count)


# --- NOC fan-out --------------------------------------------------------------------------

WEBSOCKET_BROADCAST_SUCCESS = Counter(
    "celery_websocket_broadcast_success_total",
    "Broadcasts handed to the channel layer, by event type",
    ["message_type"],
)
WEBSOCKET_BROADCAST_FAILURE = Counter(
    "celery_websocket_broadcast_failure_total",
    "Broadcasts the channel layer refused or failed, by event type",
    ["message_type"],
)
BROADCASTS_RESENT = Counter(
    "bus_broadcasts_resent_total",
    "Committed NOC events resent by beat because their first sending was never confirmed",
)
WEBSOCKET_CONNECTIONS = Gauge(
    "websocket_connections_active",
    "Open NOC WebSocket connections",
    multiprocess_mode="livesum",
)
NOC_CLIENTS_CUT_OFF = Counter(
    "noc_clients_cut_off_total",
    "NOC WebSocket clients closed with 4408 for leaving more than NOC_MAX_UNACKED_BYTES "
    "unacknowledged (stopped reading: asleep, a dead or slow link)",
)
NOC_EVENTS_DROPPED = Counter(
    "noc_events_dropped_total",
    "NOC messages not sent to a client, by reason (client_behind: cut off, unacknowledged; "
    "channel_full: the channel layer held CHANNELS_CAPACITY for it already; duplicate: an "
    "event resent after an unconfirmed send, shown once)",
    ["reason"],
)

# --- Outbound calls -----------------------------------------------------------------------

DEVICE_COMMAND_ACKS_IGNORED = Counter(
    "device_command_acks_ignored_total",
    "Device answers on device/<id>/command_ack that changed nothing, by reason (unknown_command: "
    "no such command id; other_device: the command is another device's; duplicate: it was "
    "answered already; too_late: it had expired or been cancelled)",
    ["reason"],
)

CIRCUIT_BREAKER_TRANSITIONS = Counter(
    "circuit_breaker_transitions_total",
    "Circuit breaker state changes, by service and new state",
    ["service", "state"],
)
CIRCUIT_BREAKER_CALLS_REFUSED = Counter(
    "circuit_breaker_calls_refused_total",
    "Calls refused without being attempted, by service: its breaker was open or its one "
    "half-open trial call was under way",
    ["service"],
)
CIRCUIT_BREAKER_RESETS = Counter(
    "circuit_breaker_resets_total",
    "Breakers closed by hand with manage.py circuit_breaker reset, by service",
    ["service"],
)

NOTIFICATIONS = Counter(
    "notifications_total",
    "Notifications of alerts by channel and outcome: each delivery attempt (delivered, failed, "
    "rejected, circuit_open, gave_up) and each notification folded into a digest (folded)",
    ["channel", "outcome"],
)

# --- The metric files themselves (apps/core/metric_files.py) -------------------------------

PROCESSES_ARCHIVED = Counter(
    "metrics_processes_archived_total",
    "Exited processes whose metric files were folded into the archive files, then deleted",
)

# --- Read from Redis at scrape time (apps/monitoring/exporter.py) -------------------------


@dataclass(frozen=True)
class ScrapeGauge:
    """A gauge computed by /metrics/export/ from Redis on each scrape, not recorded by a process."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))


QUEUE_DEPTH = ScrapeGauge(
    "celery_queue_depth", "Tasks waiting in each queue, all priority levels", ("queue",)
)
QUEUE_OLDEST_MESSAGE_AGE = ScrapeGauge(
    "celery_queue_oldest_message_age_seconds",
    "Age of the oldest task waiting in each queue (0 when empty)",
    ("queue",),
)
QUEUE_CANARY_AGE = ScrapeGauge(
    "celery_queue_canary_age_seconds",
    "Seconds since a worker last ran each queue's health canary (absent: never)",
    ("queue",),
)
WORKER_UP = ScrapeGauge(
    "celery_worker_up",
    "1 while a worker node's heartbeat for the queue it consumes is fresh, 0 once it is stale "
    "or the worker stopped cleanly (`manage.py bus_status` tells the two apart)",
    ("queue", "hostname"),
)
MQTT_SUBSCRIBERS_CONNECTED = ScrapeGauge(
    "celery_mqtt_subscriber_connected_total",
    "MQTT subscribers currently connected to the broker (the runbook's alert name)",
)
MQTT_PREFIX_SUBSCRIBERS = ScrapeGauge(
    "celery_mqtt_prefix_subscribers",
    "Connected MQTT subscribers reading each topic prefix (0: its messages wait in the broker)",
    ("prefix",),
)
CIRCUIT_BREAKER_STATE = ScrapeGauge(
    "circuit_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open; every breaker the code declares "
    "(0 while it has no record) and every one with a record in Redis",
    ("service",),
)
BUS_STATE_READABLE = ScrapeGauge(
    "message_bus_redis_up",
    "1 when this scrape could read the bus state (queues, workers, breakers) from Redis",
)


def exported_names() -> frozenset[str]:
    """Every series name /metrics/export/ can emit, with the suffixes Prometheus adds."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = {value.name for value in globals().values() if isinstance(value, ScrapeGauge)}
    for value in globals().values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return frozenset(names)
