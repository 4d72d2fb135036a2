from django.urls import path

from apps.noc import views

app_name = "noc"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
