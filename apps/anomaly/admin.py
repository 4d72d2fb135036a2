from django.contrib import admin

from apps.anomaly.models import AnomalyModel, TrainingRun


@admin.register(AnomalyModel)
class AnomalyModelAdmin(admin.ModelAdmin[AnomalyModel]):
    list_display = ("tenant", "device_kind", "version", "is_current", "sample_count", "created_at")
    list_filter = ("device_kind", "is_current")
    exclude = ("artifact",)
    readonly_fields = [f.name for f in AnomalyModel._meta.fields if f.name != "artifact"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin[TrainingRun]):
    list_display = ("tenant", "device_kind", "outcome", "samples", "started_at", "reason")
    list_filter = ("outcome", "device_kind")
    readonly_fields = [f.name for f in TrainingRun._meta.fields]
