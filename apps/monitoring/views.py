from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from apps.core.redis_client import state_redis
from apps.monitoring.exporter import render_metrics
from apps.monitoring.health import run_checks


def _refusal(request: HttpRequest) -> JsonResponse | None:
    """401 unless MONITORING_API_KEY is unset or the request carries it as a Bearer token."""
    key = settings.MONITORING_API_KEY
    if not key:
        return None
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if hmac.compare_digest(supplied.encode(), key.encode()):
        return None
    error = "send the monitoring API key as `Authorization: Bearer <MONITORING_API_KEY>`"
    return JsonResponse({"error": error}, status=401)


async def health(request: HttpRequest) -> JsonResponse:
    """200 when every component is up, 503 naming the ones that are not."""
    if refusal := _refusal(request):
        return refusal
    results = await run_checks()
    healthy = all(result.ok for result in results.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "checks": {name: result.as_dict() for name, result in results.items()},
    }
    return JsonResponse(body, status=200 if healthy else 503)


def metrics_export(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: every process on this host plus the bus state in Redis."""
    if refusal := _refusal(request):
        return refusal
    return HttpResponse(render_metrics(state_redis()), content_type=CONTENT_TYPE_LATEST)
