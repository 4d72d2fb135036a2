from django.contrib import admin

from apps.alerts.models import Alert, AlertTransition


class TransitionInline(admin.TabularInline[AlertTransition, Alert]):
    model = AlertTransition
    extra = 0
    readonly_fields = ["from_status", "to_status", "by", "at", "note"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin[Alert]):
    list_display = ["alert_type", "severity", "status", "source_id", "tenant", "count", "last_seen"]
    list_filter = ["tenant", "status", "severity", "alert_type"]
    search_fields = ["source_id", "message"]
    inlines = [TransitionInline]
