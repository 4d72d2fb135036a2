from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from apps.monitoring.health import run_checks


async def health(request: HttpRequest) -> JsonResponse:
    """200 when every component is up, 503 naming the ones that are not."""
    results = await run_checks()
    healthy = all(result.ok for result in results.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "checks": {name: result.as_dict() for name, result in results.items()},
    }
    return JsonResponse(body, status=200 if healthy else 503)
