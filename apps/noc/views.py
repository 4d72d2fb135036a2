from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.noc.auth import ALERT_ACTION_PERMISSION, COMMAND_PERMISSION, NOC_PERMISSION


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    allowed = bool(getattr(user, "tenant_id", None)) and user.has_perm(NOC_PERMISSION)
    context = {
        "allowed": allowed,
        "can_act": user.has_perm(ALERT_ACTION_PERMISSION),
        "can_command": user.has_perm(COMMAND_PERMISSION),
        "tenant": getattr(user, "tenant", None),
    }
    return render(request, "noc/dashboard.html", context, status=200 if allowed else 403)
