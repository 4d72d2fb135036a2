from django.contrib import admin

from apps.notifications.models import NotificationAttempt, NotificationRule


@admin.register(NotificationRule)
class NotificationRuleAdmin(admin.ModelAdmin[NotificationRule]):
    list_display = ["name", "tenant", "channel", "enabled", "severities", "alert_types", "sites"]
    list_filter = ["tenant", "channel", "enabled"]
    search_fields = ["name"]


@admin.register(NotificationAttempt)
class NotificationAttemptAdmin(admin.ModelAdmin[NotificationAttempt]):
    list_display = ["at", "tenant", "alert", "kind", "recipient", "attempt", "outcome"]
    list_filter = ["tenant", "outcome", "kind", "channel"]
    search_fields = ["delivery_id", "recipient"]
    readonly_fields = [field.name for field in NotificationAttempt._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False
