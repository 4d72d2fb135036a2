"""Channel-layer group names, built in one place from the authenticated tenant only."""

from __future__ import annotations


def tenant_group(tenant_id: int) -> str:
    return f"noc.tenant.{int(tenant_id)}"
