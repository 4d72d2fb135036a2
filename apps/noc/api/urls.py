"""`/api/`: tokens, alerts, devices, readings, and the OpenAPI schema describing them."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt.views import (
    TokenBlacklistView,
    TokenObtainPairView,
    TokenRefreshView,
)

from apps.noc.api.views import AlertViewSet, DeviceViewSet

app_name = "api"

router = DefaultRouter()
router.register("alerts", AlertViewSet, basename="alert")
router.register("devices", DeviceViewSet, basename="device")


class ThrottledTokenObtainPairView(TokenObtainPairView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"


class ThrottledTokenRefreshView(TokenRefreshView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"


class LogoutView(TokenBlacklistView):
    """Log out: the refresh token is blacklisted (its access tokens live out their minutes)."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"


urlpatterns = [
    # The obtain view's serializer (tokens that carry the tenant) is set in SIMPLE_JWT.
    # Password guessing is throttled per client address (REST_FRAMEWORK "token" rate).
    path("token/", ThrottledTokenObtainPairView.as_view(), name="token-obtain"),
    path("token/refresh/", ThrottledTokenRefreshView.as_view(), name="token-refresh"),
    path("token/logout/", LogoutView.as_view(), name="token-logout"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("", include(router.urls)),
]
