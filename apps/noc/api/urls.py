"""`/api/`: tokens, alerts, devices, geofences, readings, device commands, notification rules and
attempts, the formats of device messages, and the OpenAPI schema describing them."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import DefaultRouter
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt.views import (
    TokenBlacklistView,
    TokenObtainPairView,
    TokenRefreshView,
)

from apps.core.client_address import client_address
from apps.noc.api.message_formats import MessageFormatViewSet
from apps.noc.api.notifications import AlertNotificationsView, NotificationRuleViewSet
from apps.noc.api.views import AlertViewSet, CommandViewSet, DeviceViewSet, GeofenceViewSet
from apps.noc.logins import lockout_response

app_name = "api"

router = DefaultRouter()
router.register("alerts", AlertViewSet, basename="alert")
router.register("devices", DeviceViewSet, basename="device")
router.register("geofences", GeofenceViewSet, basename="geofence")
router.register("notification-rules", NotificationRuleViewSet, basename="notification-rule")
router.register("commands", CommandViewSet, basename="command")
router.register("message-formats", MessageFormatViewSet, basename="message-format")


class ClientAddressRateThrottle(ScopedRateThrottle):
    """The scope's rate per client address: DRF's own get_ident would key on the whole
    X-Forwarded-For header, which the client chooses."""

    def get_ident(self, request: Request) -> str:
        return client_address(request)


class ThrottledTokenObtainPairView(TokenObtainPairView):
    throttle_classes = [ClientAddressRateThrottle]
    throttle_scope = "token"

    def handle_exception(self, exc: Exception) -> Response:
        # axes marks the request it refused (apps/noc/logins.py); say so instead of a bare 401.
        if getattr(self.request, "axes_locked_out", False):
            return lockout_response(self.request)  # type: ignore[return-value]
        return super().handle_exception(exc)


class ThrottledTokenRefreshView(TokenRefreshView):
    throttle_classes = [ClientAddressRateThrottle]
    throttle_scope = "token"


class LogoutView(TokenBlacklistView):
    """Log out: the refresh token is blacklisted (its access tokens live out their minutes)."""

    throttle_classes = [ClientAddressRateThrottle]
    throttle_scope = "token"


@csrf_exempt  # whatever the method: there is nothing here to forge a request to
def not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    # The obtain view's serializer (tokens that carry the tenant) is set in SIMPLE_JWT.
    # All three are rate-limited per client address (REST_FRAMEWORK "token" rate); password guessing
    # also locks the account or the address out (django-axes, apps/noc/logins.py).
    path("token/", ThrottledTokenObtainPairView.as_view(), name="token-obtain"),
    path("token/refresh/", ThrottledTokenRefreshView.as_view(), name="token-refresh"),
    path("token/logout/", LogoutView.as_view(), name="token-logout"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path(
        "alerts/<int:pk>/notifications/",
        AlertNotificationsView.as_view(),
        name="alert-notifications",
    ),
    path("", include(router.urls)),
    # Last: a path no route takes (an id the router's pattern refuses, say) is a JSON 404 too.
    re_path(r"^.*/$", not_found),
]
