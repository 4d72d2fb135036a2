"""Password guessing: what a locked-out login is told, and the log line a lockout writes.

django-axes counts failed logins on every path that authenticates with a password and the
request: /accounts/login/, /admin/login/ and /api/token/. LOGIN_FAILURE_LIMIT failures for one
account (from any addresses), or from one client address (for any accounts), lock that account
or address out of all three for LOGIN_COOLOFF_MINUTES; a locked-out attempt is refused before its
password is checked, with 429, a Retry-After header and a message saying when to retry.
An operator lifts a lockout early with `manage.py axes_reset_username USER` or
`manage.py axes_reset_ip ADDRESS`.
"""

from __future__ import annotations

from typing import Any

import structlog
from axes.signals import user_locked_out
from django.conf import settings
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.core.client_address import client_address

log = structlog.get_logger(__name__)


def lockout_message() -> str:
    minutes = settings.LOGIN_COOLOFF_MINUTES
    return (
        "Too many failed logins for this account or from this address; "
        f"try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


def lockout_response(request: HttpRequest, *_: Any) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE, and what /api/token/ answers when axes refused the login."""
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": lockout_message()}, status=429)
    else:
        response = HttpResponse(lockout_message(), status=429, content_type="text/plain")
    response["Retry-After"] = str(settings.LOGIN_COOLOFF_MINUTES * 60)
    return response


@receiver(user_locked_out)
def log_lockout(sender: object, request: Any, username: str | None, **_: Any) -> None:
    # axes also sends this for each attempt refused while locked out: log only the lockout.
    if getattr(request, "axes_failures_since_start", None) is None:
        return
    log.warning(
        "login locked out",
        username=username,
        client=client_address(request),
        path=request.path,
        failures=request.axes_failures_since_start,
        hint=f"lifts after LOGIN_COOLOFF_MINUTES={settings.LOGIN_COOLOFF_MINUTES} without "
        "counted failures; or manage.py axes_reset_username USER / axes_reset_ip ADDRESS",
    )
