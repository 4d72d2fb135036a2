from django.urls import path

from apps.monitoring import views

app_name = "monitoring"

urlpatterns = [
    path("health/", views.health, name="health"),
]
