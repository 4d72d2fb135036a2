"""`/api/notification-rules/` and `/api/alerts/<id>/notifications/`: the caller's tenant only.

Reading needs the NOC permission; creating, changing and deleting rules needs the model's own
permissions (notifications.add_/change_/delete_notificationrule), which operators do not get
by default: a tenant's administrator grants them. A rule's webhook secret is returned once, in
the answer that created it (or set it); never afterwards.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, viewsets
from rest_framework.generics import get_object_or_404
from rest_framework.permissions import DjangoModelPermissions

from apps.alerts.models import Alert, AlertType, Severity
from apps.noc.api.views import HasNocAccess, caller_tenant_id
from apps.notifications.models import Channel, NotificationAttempt, NotificationRule
from apps.notifications.webhooks import endpoint


class NotificationRuleSerializer(serializers.ModelSerializer[NotificationRule]):
    severities = serializers.ListField(
        child=serializers.ChoiceField(choices=Severity.choices), required=False, max_length=4
    )
    alert_types = serializers.ListField(
        child=serializers.ChoiceField(choices=AlertType.choices), required=False, max_length=50
    )
    sites = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=100
    )
    emails = serializers.ListField(child=serializers.EmailField(), required=False, max_length=20)
    webhook_secret = serializers.CharField(
        write_only=True,
        required=False,
        min_length=32,
        max_length=128,
        help_text="Signs each delivery; generated when not given, and shown only in the answer "
        "that created or set it.",
    )
    webhook_endpoint = serializers.SerializerMethodField(
        help_text="scheme://host:port of the webhook URL (the URL itself is never shown again)."
    )

    class Meta:
        model = NotificationRule
        fields = [
            "id",
            "name",
            "enabled",
            "severities",
            "alert_types",
            "sites",
            "channel",
            "webhook_url",
            "webhook_endpoint",
            "webhook_secret",
            "emails",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "webhook_endpoint", "created_at", "updated_at"]
        # The path or query of a webhook URL often is the receiver's token (Slack, Teams).
        extra_kwargs = {"webhook_url": {"write_only": True}}

    def get_webhook_endpoint(self, rule: NotificationRule) -> str:
        return endpoint(rule.webhook_url) if rule.webhook_url else ""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        def value(name: str) -> Any:
            return attrs.get(name, getattr(self.instance, name, None))

        channel = value("channel")
        if channel == Channel.WEBHOOK:
            url = value("webhook_url") or ""
            if not url.startswith(("https://", "http://")):
                raise serializers.ValidationError(
                    {"webhook_url": "a webhook rule needs an http:// or https:// URL"}
                )
        elif channel == Channel.EMAIL and not value("emails"):
            raise serializers.ValidationError({"emails": "an e-mail rule needs an address"})
        return attrs

    def to_representation(self, rule: NotificationRule) -> dict[str, Any]:
        data = super().to_representation(rule)
        secret_given = "webhook_secret" in getattr(self, "initial_data", {})
        creating = self.context.get("view") is not None and self.context["view"].action == "create"
        if rule.channel == Channel.WEBHOOK and (creating or secret_given):
            data["webhook_secret"] = rule.webhook_secret
        return data


class NotificationRuleViewSet(viewsets.ModelViewSet[NotificationRule]):
    """The tenant's notification rules."""

    serializer_class = NotificationRuleSerializer
    # GET for anyone with NOC access; POST, PUT, PATCH and DELETE need the model's permissions.
    permission_classes = [HasNocAccess, DjangoModelPermissions]

    def get_queryset(self) -> QuerySet[NotificationRule]:
        tenant_id = caller_tenant_id(self.request)
        if tenant_id is None:
            return NotificationRule.objects.none()
        return NotificationRule.objects.filter(tenant_id=tenant_id).order_by("name", "id")

    def perform_create(self, serializer: serializers.BaseSerializer[NotificationRule]) -> None:
        tenant_id = caller_tenant_id(self.request)
        if tenant_id is None:
            raise serializers.ValidationError("a user without a tenant cannot own rules")
        serializer.save(tenant_id=tenant_id)


class NotificationAttemptSerializer(serializers.ModelSerializer[NotificationAttempt]):
    class Meta:
        model = NotificationAttempt
        fields = [
            "id",
            "delivery_id",
            "kind",
            "rule",
            "channel",
            "recipient",
            "attempt",
            "outcome",
            "status_code",
            "error",
            "duration_ms",
            "at",
        ]
        read_only_fields = fields


class AlertNotificationsView(generics.ListAPIView[NotificationAttempt]):
    """Every attempt to notify anyone of one alert of the caller's tenant, oldest first
    (outcome `folded`: sent in the recipient's digest instead)."""

    serializer_class = NotificationAttemptSerializer
    permission_classes = [HasNocAccess]

    @extend_schema(summary="The notification attempts of one alert")
    def get(self, *args: Any, **kwargs: Any) -> Any:
        return super().get(*args, **kwargs)

    def get_queryset(self) -> QuerySet[NotificationAttempt]:
        tenant_id = caller_tenant_id(self.request)
        if tenant_id is None:
            return NotificationAttempt.objects.none()
        alert = get_object_or_404(Alert.objects.filter(tenant_id=tenant_id), pk=self.kwargs["pk"])
        return NotificationAttempt.objects.filter(alert=alert).order_by("at", "id")
