from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from apps.alerts.models import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    AlertStatus,
    AlertType,
    Severity,
)
from apps.devices.models import Device
from apps.devices.services import NaturallyOrdered, search_devices
from apps.noc.auth import ALERT_ACTION_PERMISSION, COMMAND_PERMISSION, NOC_PERMISSION
from apps.noc.vendor import LEAFLET, UPLOT
from apps.tenants.models import User

DEVICES_PER_PAGE = 50
# The device page's window of readings: choices offered, in hours, and the one it opens with.
READING_WINDOWS_HOURS = (1, 6, 24, 24 * 7)
DEFAULT_WINDOW_HOURS = 24

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


def page_context(request: HttpRequest) -> dict[str, Any]:
    """What every NOC page needs; `allowed`: the user has a tenant and the NOC permission (a
    page answers 403 otherwise)."""
    user = request.user
    return {
        "allowed": bool(getattr(user, "tenant_id", None)) and user.has_perm(NOC_PERMISSION),
        "can_act": user.has_perm(ALERT_ACTION_PERMISSION),
        "can_command": user.has_perm(COMMAND_PERMISSION),
        "tenant": getattr(user, "tenant", None),
    }


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    context = {**page_context(request), "vocabulary": console_vocabulary()}
    return render(request, "noc/dashboard.html", context, status=200 if context["allowed"] else 403)


def allowed_tenant_id(request: HttpRequest) -> int:
    """The tenant of a user page_context allowed in."""
    user = request.user
    assert isinstance(user, User)
    assert user.tenant_id is not None
    return user.tenant_id


@login_required
def device_list(request: HttpRequest) -> HttpResponse:
    """The tenant's devices in natural order of id, filtered by status and a search, paged."""
    context = page_context(request)
    if not context["allowed"]:
        return render(request, "noc/devices.html", context, status=403)
    status = request.GET.get("status", "")
    search = request.GET.get("search", "").strip()[:100]
    devices = Device.objects.filter(tenant_id=allowed_tenant_id(request))
    if status in Device.Status.values:
        devices = devices.filter(status=status)
    else:
        status = ""
    if search:
        devices = search_devices(devices, search)
    page = Paginator(NaturallyOrdered(devices), DEVICES_PER_PAGE).get_page(request.GET.get("page"))
    query = {name: value for name, value in (("status", status), ("search", search)) if value}
    context.update(
        page=page, status=status, search=search, statuses=Device.Status.choices, query=query
    )
    return render(request, "noc/devices.html", context)


@login_required
def device_detail(request: HttpRequest, device_id: str) -> HttpResponse:
    """One device: charts of its readings, its map (guards), alerts and commands, all drawn by
    noc/device.js from the REST API. Another tenant's device is a 404 like a missing one."""
    context = page_context(request)
    if not context["allowed"]:
        return render(request, "noc/device.html", context, status=403)
    device = get_object_or_404(Device, tenant_id=allowed_tenant_id(request), device_id=device_id)
    api = reverse("api:device-detail", kwargs={"device_id": device.device_id})
    context.update(
        device=device,
        assets={
            "uplot_js": UPLOT.static_path("dist/uPlot.iife.min.js"),
            "uplot_css": UPLOT.static_path("dist/uPlot.min.css"),
            "leaflet_js": LEAFLET.static_path("dist/leaflet.js"),
            "leaflet_css": LEAFLET.static_path("dist/leaflet.css"),
        },
        windows=READING_WINDOWS_HOURS,
        config={
            "deviceId": device.device_id,
            "isGuard": device.kind == Device.Kind.GPS_TRACKER,
            "api": {
                "device": api,
                "readings": f"{api}readings/",
                "commands": f"{api}commands/",
                "alerts": reverse("api:alert-list"),
                "geofences": reverse("api:geofence-list"),
            },
            "windowHours": DEFAULT_WINDOW_HOURS,
            "canCommand": context["can_command"],
            "csrfToken": get_token(request),
            "tileUrl": settings.NOC_MAP_TILE_URL,
            "tileAttribution": settings.NOC_MAP_ATTRIBUTION,
        },
    )
    return render(request, "noc/device.html", context)
