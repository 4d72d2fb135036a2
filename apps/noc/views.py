from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.alerts.models import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    AlertStatus,
    AlertType,
    Severity,
)
from apps.noc.auth import ALERT_ACTION_PERMISSION, COMMAND_PERMISSION, NOC_PERMISSION

# The dashboard's alert buttons, in the order of an alert's life: the REST action each posts to
# (/api/alerts/{id}/<action>/, apps/noc/api/views.py), the status it leads to and its label. An
# alert's row offers the first its status allows (ALLOWED_TRANSITIONS); its panel offers them all.
ALERT_ACTIONS = [
    ("acknowledge", AlertStatus.ACKNOWLEDGED, "Acknowledge"),
    ("start", AlertStatus.IN_PROGRESS, "Start"),
    ("resolve", AlertStatus.RESOLVED, "Resolve"),
    ("false_alarm", AlertStatus.FALSE_ALARM, "False alarm"),
]


def console_vocabulary() -> dict[str, Any]:
    """What the page's filters and buttons offer, from the alerts' own vocabulary."""
    return {
        "severities": Severity.values,
        "alert_types": AlertType.choices,
        "statuses": AlertStatus.choices,
        "active_statuses": [str(status) for status in ACTIVE_STATUSES],
        "actions": [
            {"action": action, "to": str(to), "label": label} for action, to, label in ALERT_ACTIONS
        ],
        "allowed": {str(status): sorted(to) for status, to in ALLOWED_TRANSITIONS.items()},
    }


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    allowed = bool(getattr(user, "tenant_id", None)) and user.has_perm(NOC_PERMISSION)
    context = {
        "allowed": allowed,
        "can_act": user.has_perm(ALERT_ACTION_PERMISSION),
        "can_command": user.has_perm(COMMAND_PERMISSION),
        "tenant": getattr(user, "tenant", None),
        "vocabulary": console_vocabulary(),
    }
    return render(request, "noc/dashboard.html", context, status=200 if allowed else 403)
