"""How /api/schema/ describes this project's REST API; loaded by NocConfig.ready().

Kept apart from authentication.py: DRF imports authentication classes while it is itself still
loading, too early to import drf_spectacular's schema machinery.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object, is_serializer
from drf_spectacular.utils import Direction, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.settings import api_settings
from rest_framework_simplejwt.views import TokenViewBase

from apps.noc.api.authentication import TenantJWTAuthentication


# Defining the subclass registers it (through drf-spectacular's untyped __init_subclass__).
class TenantJWTScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = TenantJWTAuthentication
    name = "jwtAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return build_bearer_security_scheme_object(
            header_name="HTTP_AUTHORIZATION",
            token_prefix="Bearer",  # noqa: S106  (the header's scheme word, not a secret)
            bearer_format="JWT",
        )


class ErrorSerializer(serializers.Serializer[Any]):
    """How DRF words a refusal (simplejwt adds `code` and `messages` to a bad token's)."""

    detail = serializers.CharField()


# A 400 names each bad field with its messages (or gives one `detail`, for unreadable JSON).
VALIDATION_ERROR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    },
}


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the errors each operation can answer, read from its
    view, so that a client (and tests/security/test_api_schema_fuzz.py) finds every answer
    documented: 400 when it reads a body or query parameters, 401 and 403 when it needs a
    caller or checks credentials, 404 for a path id (or a ?format= it does not render), 429
    when it is throttled."""

    def _get_response_bodies(self, direction: Direction = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, (body, description) in self._errors().items():
            if code not in responses:
                documented = OpenApiResponse(body, description)
                responses[code] = self._get_response_for_code(  # type: ignore[no-untyped-call]
                    documented, code, None, direction
                )
        return responses

    def _errors(self) -> dict[str, tuple[Any, str]]:
        view, parameters = self.view, self.get_override_parameters()
        errors: dict[str, tuple[Any, str]] = {}
        if self.method in ("POST", "PUT", "PATCH") or any(map(is_serializer, parameters)):
            errors["400"] = (VALIDATION_ERROR, "Invalid body or query parameters: see each field.")
        if isinstance(view, TokenViewBase):
            errors["401"] = (ErrorSerializer, "Wrong credentials, or a token no longer valid.")
        if not all(isinstance(p, AllowAny) for p in view.get_permissions()):
            errors["401"] = (ErrorSerializer, "No valid credentials: a Bearer access token.")
            errors["403"] = (ErrorSerializer, "The caller lacks the permission this needs.")
        # drf-spectacular documents ?format= where a view renders several: DRF's 404 for others.
        formats = api_settings.URL_FORMAT_OVERRIDE and len(self.map_renderers("format")) > 1
        if "{" in self.path or formats:
            errors["404"] = (ErrorSerializer, "Nothing by that id for the caller (or that format).")
        if view.get_throttles():
            errors["429"] = (ErrorSerializer, "Too many requests; Retry-After says when again.")
        return errors
