from django.apps import AppConfig


class AnomalyConfig(AppConfig):
    name = "apps.anomaly"
    label = "anomaly"
    verbose_name = "Anomaly detection"
