from django.contrib import admin

from apps.core.models import DeadLetter


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin[DeadLetter]):
    list_display = ["created_at", "stage", "reason", "topic", "payload_size", "replayed_at"]
    list_filter = ["stage", "reason"]
    search_fields = ["topic", "detail"]
    readonly_fields = [field.name for field in DeadLetter._meta.fields]
