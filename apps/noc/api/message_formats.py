"""`/api/message-formats/`: what devices send, for integrators — each kind of device message with
its topics, an example and its JSON Schema (apps/devices/messages.py; docs/messages.md is the
same contract written out). The same for every tenant: it holds no tenant's data."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from apps.devices.messages import MESSAGE_KINDS, MESSAGE_KINDS_BY_NAME
from apps.noc.api.views import HasNocAccess


class MessageFormatSerializer(serializers.Serializer[Any]):
    kind = serializers.CharField(source="name", help_text="Its section in docs/messages.md")
    topics = serializers.ListField(child=serializers.CharField())
    heartbeat = serializers.BooleanField(
        help_text="Sent regularly: a device that sends it is expected to keep reporting"
    )
    documentation = serializers.CharField()
    example = serializers.DictField(help_text="A payload intake accepts (at its timestamp)")
    json_schema = serializers.DictField(help_text="Its JSON Schema")  # DRF calls the method


class MessageFormatViewSet(viewsets.ViewSet):
    """Each kind of device message; one kind's detail is its JSON Schema."""

    permission_classes = [HasNocAccess]
    lookup_field = "kind"
    lookup_value_regex = "[a-z_]+"

    @extend_schema(responses=MessageFormatSerializer(many=True))
    def list(self, request: Request) -> Response:
        return Response(MessageFormatSerializer(MESSAGE_KINDS, many=True).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, description="The kind's JSON Schema.")
    def retrieve(self, request: Request, kind: str) -> Response:
        message = MESSAGE_KINDS_BY_NAME.get(kind)
        if message is None:
            raise NotFound(f"no kind of device message is named {kind!r}")
        return Response(message.json_schema())
