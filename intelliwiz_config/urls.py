from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from apps.monitoring.views import metrics_export

urlpatterns = [
    # The site's front door is the operators' dashboard (which sends a stranger to log in).
    path("", RedirectView.as_view(pattern_name="noc:dashboard"), name="home"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("noc/", include("apps.noc.urls")),
    path("api/", include("apps.noc.api.urls")),
    path("monitoring/", include("apps.monitoring.urls")),
    path("metrics/export/", metrics_export, name="metrics-export"),
]
