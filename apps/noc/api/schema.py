"""How /api/schema/ describes this project's own REST classes; loaded by NocConfig.ready().

Kept apart from authentication.py: DRF imports authentication classes while it is itself still
loading, too early to import drf_spectacular's schema machinery.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object

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
