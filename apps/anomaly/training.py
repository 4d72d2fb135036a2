"""Fitting an anomaly model per tenant and device kind on its stored telemetry.

One job per (tenant, device kind) with registered devices: read the last ANOMALY_TRAINING_DAYS of
telemetry (at most ANOMALY_MAX_SAMPLES readings, the newest), check it is fit to learn from, fit
a robust covariance (docs/anomaly.md), measure it, and store it as the next version. Data that
is missing, too small or mostly incomplete keeps the previous model; every attempt is a
`TrainingRun` saying what happened. Each step is reported to `report` (the NOC's
`task_progress`, the command's output).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.anomaly import registry
from apps.anomaly.features import FEATURES, complete, matrix
from apps.anomaly.models import AnomalyModel, TrainingRun
from apps.devices.models import Device, TelemetryReading
from apps.tenants.models import Tenant

if TYPE_CHECKING:
    from apps.anomaly.features import Matrix

log = structlog.get_logger(__name__)

ALGORITHM = "MinCovDet"  # robust covariance; docs/anomaly.md says why not IsolationForest
# Rows a covariance is fitted on (a random draw); the threshold and metrics use every row.
FIT_SAMPLE = 500
# Of each job's data, the newest share is held out: fitted on the rest, it measures how a model
# treats readings it has not seen (metrics["holdout_flag_rate"]).
HOLDOUT_SHARE = 0.2
STEPS_PER_JOB = 3  # read, fit, store


@dataclass(frozen=True)
class Progress:
    """One step of a training job, as the NOC's `task_progress` event carries it."""

    job: str
    tenant_id: int
    device_kind: str
    stage: str  # reading | fitting | trained | kept | failed
    done: int  # steps done of `total`, over the whole run
    total: int
    message: str

    def as_data(self) -> dict[str, Any]:
        return {"task": "train_models", **asdict(self)}


Reporter = Callable[[Progress], object]


class UnfitData(Exception):
    """The data cannot make a model; the message says why and what to do."""


@dataclass(frozen=True)
class Fitted:
    estimate: registry.Estimate
    threshold: float
    metrics: dict[str, Any]


def train(
    tenants: Iterable[Tenant] | None = None,
    *,
    device_kind: str | None = None,
    report: Reporter = lambda _progress: None,
) -> list[TrainingRun]:
    """Train every (tenant, device kind) with registered devices; one TrainingRun each."""
    chosen = list(tenants) if tenants is not None else list(Tenant.objects.all())
    kinds = Device.objects.filter(tenant__in=chosen).values_list("tenant_id", "kind").distinct()
    if device_kind is not None:
        kinds = kinds.filter(kind=device_kind)
    jobs = sorted(set(kinds))
    job_id = uuid.uuid4().hex[:12]
    total = len(jobs) * STEPS_PER_JOB
    runs = []
    for index, (tenant_id, kind) in enumerate(jobs):
        step = _Steps(report, job_id, tenant_id, kind, index * STEPS_PER_JOB, total)
        runs.append(train_one(tenant_id, kind, step))
    return runs


class _Steps:
    def __init__(
        self, report: Reporter, job: str, tenant_id: int, kind: str, done: int, total: int
    ) -> None:
        self.report, self.job, self.tenant_id, self.kind = report, job, tenant_id, kind
        self.first, self.total = done, total

    def __call__(self, stage: str, step: int, message: str) -> None:
        progress = Progress(
            self.job, self.tenant_id, self.kind, stage, self.first + step, self.total, message
        )
        self.report(progress)


def train_one(tenant_id: int, kind: str, step: _Steps) -> TrainingRun:
    run = TrainingRun.objects.create(tenant_id=tenant_id, device_kind=kind)
    end = timezone.now()
    start = end - timedelta(days=settings.ANOMALY_TRAINING_DAYS)
    step("reading", 0, f"reading {kind} telemetry received since {start:%Y-%m-%d %H:%M} UTC")
    try:
        values = _readings(tenant_id, kind, start, end)
        run.samples = len(values)
        usable = fit_ready(values, kind)
        step("fitting", 1, f"fitting {ALGORITHM} on {len(usable)} of {len(values)} readings")
        fitted = fit(usable, dropped=len(values) - len(usable))
        # A run racing this one for the same tenant and kind fails here on the unique version.
        model = _store(tenant_id, kind, fitted, start, end, len(usable))
    except UnfitData as exc:
        return _finish(run, step, TrainingRun.Outcome.KEPT, f"{exc}; {_previous(tenant_id, kind)}")
    except SoftTimeLimitExceeded:
        reason = (
            f"stopped at the ml_training soft time limit; {_previous(tenant_id, kind)}; "
            "lower ANOMALY_MAX_SAMPLES if it recurs"
        )
        _finish(run, step, TrainingRun.Outcome.FAILED, reason)
        raise
    except Exception as exc:
        log.exception("anomaly training failed", tenant_id=tenant_id, device_kind=kind)
        reason = f"{type(exc).__name__}: {exc}; {_previous(tenant_id, kind)}"
        return _finish(run, step, TrainingRun.Outcome.FAILED, reason)
    run.model = model
    metrics = fitted.metrics
    return _finish(
        run,
        step,
        TrainingRun.Outcome.TRAINED,
        f"model v{model.version} from {len(usable)} readings: threshold {fitted.threshold:.2f}, "
        f"{metrics['training_flag_rate']:.1%} of training readings and "
        f"{metrics['holdout_flag_rate']:.1%} of held-out readings above it",
    )


def _readings(tenant_id: int, kind: str, start: datetime, end: datetime) -> Matrix:
    newest_first = (
        TelemetryReading.objects.filter(
            tenant_id=tenant_id, device__kind=kind, received_at__gte=start, received_at__lte=end
        )
        .order_by("-received_at")
        .values_list(*FEATURES)[: settings.ANOMALY_MAX_SAMPLES]
    )
    rows = list(newest_first)
    rows.reverse()  # oldest first: the holdout is the newest
    return matrix(rows)


def fit_ready(values: Matrix, kind: str) -> Matrix:
    """The complete rows, or UnfitData saying why there is nothing fit to learn from."""
    window = f"in the last {settings.ANOMALY_TRAINING_DAYS} days (ANOMALY_TRAINING_DAYS)"
    if len(values) == 0:
        raise UnfitData(f"no telemetry from {kind} devices {window}")
    usable = values[complete(values)]
    incomplete = len(values) - len(usable)
    limit = settings.ANOMALY_MAX_INCOMPLETE_SHARE
    if incomplete / len(values) > limit:
        raise UnfitData(
            f"{incomplete} of {len(values)} readings lack a finite {', '.join(FEATURES)} "
            f"(more than ANOMALY_MAX_INCOMPLETE_SHARE={limit:g}): "
            "check what these devices send"
        )
    if len(usable) < settings.ANOMALY_MIN_SAMPLES:
        raise UnfitData(
            f"only {len(usable)} complete readings {window}; "
            f"ANOMALY_MIN_SAMPLES={settings.ANOMALY_MIN_SAMPLES} are needed"
        )
    return usable


def fit(values: Matrix, *, dropped: int = 0) -> Fitted:
    """A robust covariance estimate of `values` (complete rows, oldest first), its threshold and
    its metrics.

    The threshold is the distance that ANOMALY_CONTAMINATION of the training readings reach.
    """
    started = time.monotonic()
    share = settings.ANOMALY_CONTAMINATION
    split = int(len(values) * (1 - HOLDOUT_SHARE))
    probe = estimate(values[:split])
    probe_threshold = _threshold(probe.distance(values[:split]), share)
    holdout = probe.distance(values[split:])
    fitted = estimate(values)
    distances = fitted.distance(values)
    threshold = _threshold(distances, share)
    metrics = {
        "samples": len(values),
        "incomplete_dropped": dropped,
        "contamination": share,
        "threshold": threshold,
        "training_flag_rate": float(np.mean(distances >= threshold)),
        "holdout_samples": len(holdout),
        "holdout_flag_rate": float(np.mean(holdout >= probe_threshold)) if len(holdout) else 0.0,
        "distance_p50": float(np.quantile(distances, 0.5)),
        "distance_p99": float(np.quantile(distances, 0.99)),
        "location": dict(zip(FEATURES, fitted.location.tolist(), strict=True)),
        "fit_seconds": round(time.monotonic() - started, 3),
    }
    return Fitted(fitted, threshold, metrics)


def estimate(values: Matrix) -> registry.Estimate:
    """scikit-learn's Minimum Covariance Determinant on at most FIT_SAMPLE of the rows, drawn
    evenly at random: where the bulk of the readings lies and how it spreads, ignoring the
    outliers among them (up to half). Its cost jumps above 500 rows, its accuracy hardly moves."""
    from sklearn.covariance import MinCovDet

    rows = np.random.default_rng(0).permutation(len(values))[:FIT_SAMPLE]
    mcd = MinCovDet(random_state=0).fit(values[rows])
    return registry.Estimate(np.asarray(mcd.location_), np.asarray(mcd.precision_))


def _threshold(distances: Matrix, share: float) -> float:
    return float(np.quantile(distances, 1 - share))


def _store(
    tenant_id: int, kind: str, fitted: Fitted, start: datetime, end: datetime, samples: int
) -> AnomalyModel:
    import sklearn

    artifact, sha256 = registry.serialize(fitted.estimate)
    with transaction.atomic():
        mine = AnomalyModel.objects.select_for_update().filter(
            tenant_id=tenant_id, device_kind=kind
        )
        latest = mine.aggregate(latest=Max("version"))["latest"] or 0
        mine.filter(is_current=True).update(is_current=False)
        model = AnomalyModel.objects.create(
            tenant_id=tenant_id,
            device_kind=kind,
            version=latest + 1,
            algorithm=ALGORITHM,
            features=list(FEATURES),
            window_start=start,
            window_end=end,
            sample_count=samples,
            threshold=fitted.threshold,
            metrics=fitted.metrics,
            library_versions={"scikit-learn": sklearn.__version__, "numpy": np.__version__},
            artifact=artifact,
            sha256=sha256,
        )
        transaction.on_commit(registry.announce_new_models)
    return model


def _previous(tenant_id: int, kind: str) -> str:
    current = AnomalyModel.objects.filter(
        tenant_id=tenant_id, device_kind=kind, is_current=True
    ).values_list("version", flat=True)
    version = current.first()
    return f"model v{version} stays in use" if version else "no model yet: readings not scored"


def _finish(run: TrainingRun, step: _Steps, outcome: str, reason: str) -> TrainingRun:
    run.outcome, run.reason, run.finished_at = outcome, reason, timezone.now()
    run.save(update_fields=["outcome", "reason", "samples", "model", "finished_at"])
    logged = log.info if outcome == TrainingRun.Outcome.TRAINED else log.warning
    logged(
        f"anomaly training {outcome}",
        tenant_id=run.tenant_id,
        device_kind=run.device_kind,
        reason=reason,
    )
    step(outcome, STEPS_PER_JOB, reason)
    return run
