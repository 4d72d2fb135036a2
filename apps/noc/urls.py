from django.urls import path

from apps.noc import views

app_name = "noc"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("devices/", views.device_list, name="devices"),
    path("devices/<str:device_id>/", views.device_detail, name="device"),
]
