"""The current model of each tenant and device kind, loaded once per process.

Scoring asks `MODELS.current()` in every telemetry batch. It looks for news at most every
ANOMALY_MODEL_CHECK_SECONDS with one Redis GET of `anomaly:model_generation`, a random token
the training task sets anew after it commits a model (a token, not a counter: a counter that
Redis lost would count 1, 2, … again and match what a process already holds); when the token
differs from the one it loaded, it reads which models are current (one query) and loads only the
ones it does not hold yet.
A process whose tenants have no model holds an empty dict.

A model is stored as plain numbers (JSON: the robust location and precision matrix), never as
a pickle, and loaded only if the bytes match their SHA-256; scoring needs numpy alone, imported
with the first model (features.py says why).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog
from django.conf import settings
from redis.exceptions import RedisError

from apps.anomaly.models import AnomalyModel
from apps.core.redis_client import state_redis

if TYPE_CHECKING:
    from apps.anomaly.features import Matrix

log = structlog.get_logger(__name__)

GENERATION_KEY: Final = "anomaly:model_generation"
ModelKey = tuple[int, str]  # (tenant id, device kind)


@dataclass(frozen=True)
class Estimate:
    """Where normal readings sit (location) and how they spread (precision: the inverse of
    their covariance), as a robust covariance fit found them."""

    location: Matrix
    precision: Matrix

    def distance(self, values: Matrix) -> Matrix:
        """Each row's robust (Mahalanobis) distance from the location: how many standard
        deviations out it is, with the features' correlations taken into account."""
        import numpy as np

        centred = values - self.location
        squared: Matrix = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        distances: Matrix = np.sqrt(np.maximum(squared, 0.0))
        return distances


@dataclass(frozen=True)
class LoadedModel:
    pk: int
    version: int
    features: tuple[str, ...]
    threshold: float
    estimate: Estimate


def announce_new_models() -> None:
    """Tell every process's cache that the current models changed (call after the commit)."""
    try:
        state_redis().set(GENERATION_KEY, uuid.uuid4().hex)
    except RedisError as exc:
        log.warning(
            "could not announce a new anomaly model; processes load it after their next reload",
            error=f"{type(exc).__name__}: {exc}",
            hint="check Redis (REDIS_URL); restarting the general workers also loads it",
        )


def serialize(estimate: Estimate) -> tuple[bytes, str]:
    """The estimate as JSON bytes, and their SHA-256."""
    numbers = {"location": estimate.location.tolist(), "precision": estimate.precision.tolist()}
    data = json.dumps(numbers).encode()
    return data, hashlib.sha256(data).hexdigest()


def deserialize(data: bytes, sha256: str) -> Estimate:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError("the stored model's bytes do not match their SHA-256")
    import numpy as np

    numbers: dict[str, Any] = json.loads(data)
    location = np.array(numbers["location"], dtype=np.float64)
    precision = np.array(numbers["precision"], dtype=np.float64)
    if precision.shape != (len(location), len(location)):
        raise ValueError(
            f"a precision matrix of shape {precision.shape} for {len(location)} features"
        )
    return Estimate(location, precision)


class ModelCache:
    """This process's current models by (tenant id, device kind)."""

    _UNKNOWN: Final = object()

    def __init__(self) -> None:
        self._models: dict[ModelKey, LoadedModel] = {}
        self._generation: object = self._UNKNOWN
        self._checked_at = -math.inf

    def current(self) -> dict[ModelKey, LoadedModel]:
        now = time.monotonic()
        if now - self._checked_at < settings.ANOMALY_MODEL_CHECK_SECONDS:
            return self._models
        self._checked_at = now
        try:
            generation = state_redis().get(GENERATION_KEY)
        except RedisError as exc:
            log.warning(
                "anomaly models not checked for news: Redis did not answer",
                error=f"{type(exc).__name__}: {exc}",
                hint="scoring goes on with the models already loaded; check REDIS_URL",
            )
            return self._models
        if generation != self._generation:
            self._models = self._reload()
            self._generation = generation
        return self._models

    def _reload(self) -> dict[ModelKey, LoadedModel]:
        held = {model.pk: model for model in self._models.values()}
        rows = AnomalyModel.objects.filter(is_current=True).values_list(
            "pk", "tenant_id", "device_kind"
        )
        models: dict[ModelKey, LoadedModel] = {}
        for pk, tenant_id, kind in rows:
            loaded = held.get(pk) or _load(pk)
            if loaded is not None:
                models[(tenant_id, kind)] = loaded
        return models


def _load(pk: int) -> LoadedModel | None:
    row = AnomalyModel.objects.select_related("tenant").filter(pk=pk).first()
    if row is None:  # replaced between the two queries: the next generation names its successor
        return None
    try:
        estimate = deserialize(bytes(row.artifact), row.sha256)
    except Exception as exc:
        log.error(
            "anomaly model not loaded: its readings are not scored",
            tenant_id=row.tenant_id,
            device_kind=row.device_kind,
            version=row.version,
            error=f"{type(exc).__name__}: {exc}",
            hint=f"retrain it: manage.py train_models --tenant {row.tenant.name} "
            f"--kind {row.device_kind}",
        )
        return None
    log.info(
        "anomaly model loaded",
        tenant_id=row.tenant_id,
        device_kind=row.device_kind,
        version=row.version,
    )
    return LoadedModel(row.pk, row.version, tuple(row.features), row.threshold, estimate)


MODELS = ModelCache()
