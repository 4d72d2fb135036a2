"""Training on the ml_training queue: weekly by beat (BEAT_SCHEDULE), or `train_models --queue`.

Not acks_late: a run may take up to ML_TRAINING's time limits (4 h soft, 5 minutes more hard),
longer than the broker's visibility timeout, and must never run twice; one lost to a worker's
death is simply the next week's run, or an operator's `train_models`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import shared_task

from apps.anomaly.models import TrainingRun
from apps.core.events import Event, EventType, broadcast_events
from apps.core.tasks.celery_settings import TRAIN_ANOMALY_MODELS
from apps.tenants.models import Tenant

if TYPE_CHECKING:
    from apps.anomaly.training import Progress


def broadcast_progress(progress: Progress) -> None:
    """The step as `task_progress` to its tenant's dashboards (and nobody else's)."""
    broadcast_events([Event(progress.tenant_id, EventType.TASK_PROGRESS, progress.as_data())])


@shared_task(name=TRAIN_ANOMALY_MODELS, acks_late=False)
def train_anomaly_models(
    tenant_id: int | None = None, device_kind: str | None = None
) -> dict[str, int]:
    """Train the tenant's models (every tenant's when None); how many runs ended each way."""
    # Here, not at the top: every worker imports this module, only ml_training's trains.
    from apps.anomaly.training import train

    tenants = None if tenant_id is None else Tenant.objects.filter(pk=tenant_id)
    runs = train(tenants, device_kind=device_kind, report=broadcast_progress)
    return {
        outcome: sum(run.outcome == outcome for run in runs)
        for outcome in TrainingRun.Outcome.values
        if outcome != TrainingRun.Outcome.RUNNING
    }
