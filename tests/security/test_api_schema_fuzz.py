"""The REST API fuzzed from its own OpenAPI schema (schemathesis), against a live Daphne.

Schemathesis generates requests for every operation of /api/schema/, valid and invalid (query
parameters, path ids, bodies), as an operator of a tenant with alerts, devices and readings,
and as nobody. Every answer must be no server error, and documented: its status code, its
content type and its body are in the schema. The tests are made at collection, from the schema
generated here; the first test checks that the live server serves that same schema.

The number of requests per operation is printed: run with `-s` to see it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import start_daphne
from tests.services import Service

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
GENERATION = {"mode": "all", "database": "none"}  # valid and invalid requests; no replay file
REQUESTS: Counter[str] = Counter()  # per test and operation, for the printed figures


def served_schema() -> dict[str, Any]:
    """/api/schema/ as the server renders it (generated here: tests are made at collection)."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


def fuzzed(**config: Any) -> Any:
    """The schema, fuzzed with a fixed seed (the same requests on every run) and `config`."""
    settings = {"seed": 10, "phases": {"stateful": {"enabled": False}}, **config}
    return schemathesis.openapi.from_dict(SERVED, config=SchemathesisConfig.from_dict(settings))


SERVED = served_schema()
# The operator: every operation that reads the caller, each parameter's edge cases (coverage
# phase) then 15 generated requests. The token endpoints ignore the caller, and the schema is
# public: the anonymous run has them.
AS_OPERATOR = fuzzed(generation={**GENERATION, "max-examples": 15}).exclude(
    path_regex="^/api/(token|schema)/"
)
# Nobody: a few requests where a caller is required (each is refused before anything is read);
# the token endpoints in full, fewer since each request hashes a password (a third of a second).
AS_NOBODY = fuzzed(
    generation={**GENERATION, "max-examples": 5},
    phases={"stateful": {"enabled": False}, "coverage": {"enabled": False}},
    operations=[
        {
            "include-path-regex": "^/api/(token|schema)/",
            "generation": {**GENERATION, "max-examples": 10},
            "phases": {"coverage": {"enabled": True}},
        }
    ],
)
# Committed, so that Daphne sees each test's data; emptied after each test.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def api_url(redis_server: Service, scratch_dir: Path, django_db_setup: None) -> Iterator[str]:
    """A Daphne of its own: token requests are throttled per address, and these are many."""
    started = time.monotonic()
    log = scratch_dir / "log" / "daphne-api-fuzz.log"
    service, port = start_daphne(log, API_TOKEN_RATE="100000/min")
    yield f"http://127.0.0.1:{port}"
    service.stop()
    total = sum(REQUESTS.values())
    print(f"\nAPI schema fuzz: {total} requests in {time.monotonic() - started:.1f} s")
    for label, count in sorted(REQUESTS.items()):
        print(f"  {count:4d}  {label}")


@pytest.fixture
def operator_token() -> str:
    """An operator of a tenant with devices, readings and alerts, beside another tenant's."""
    from apps.noc.auth import issue_access_token
    from apps.noc.operators import grant_operator_permissions
    from apps.tenants.models import User

    create_site("globex")
    # No password: the token is issued here, and hashing one costs a third of a second.
    user = User.objects.create(username="acme-op", tenant=create_site("acme"))
    grant_operator_permissions(user)
    return issue_access_token(user)


def create_site(name: str) -> Any:
    from apps.alerts.services import AlertSignal, raise_alert
    from apps.devices.models import Device, GuardLocation, SensorReading, TelemetryReading
    from apps.devices.services import register_device
    from apps.tenants.models import Tenant

    now = timezone.now()
    tenant = Tenant.objects.create(name=name)
    for device_id, kind, model, fields in (
        (f"{name}-panic", Device.Kind.PANIC_BUTTON, None, {}),
        (f"{name}-smoke", Device.Kind.SMOKE, SensorReading, {"sensor_type": "smoke", "value": 1}),
        (f"{name}-guard", Device.Kind.GPS_TRACKER, GuardLocation, {"lat": 12.9, "lon": 77.6}),
        (f"{name}-gw", Device.Kind.GATEWAY, TelemetryReading, {"battery": 80.0}),
    ):
        device, _ = register_device(tenant, device_id, kind, site=f"{name}-hq")
        if model is not None:
            model._default_manager.create(
                tenant=tenant,
                device=device,
                idempotency_key=f"{device_id}#1",
                recorded_at=now,
                received_at=now,
                **fields,
            )
        raise_alert(AlertSignal(device=device, alert_type="PANIC", severity="HIGH", seen_at=now))
    return tenant


def test_the_live_server_serves_the_schema_fuzzed_here(api_url: str) -> None:
    with urllib.request.urlopen(f"{api_url}/api/schema/?format=json", timeout=30) as response:  # noqa: S310
        assert json.loads(response.read()) == SERVED


@AS_OPERATOR.parametrize()
@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation_answers_an_operator_as_documented(
    case: Any, api_url: str, operator_token: str
) -> None:
    REQUESTS[f"operator {case.operation.label}"] += 1
    case.call_and_validate(
        base_url=api_url, headers={"Authorization": f"Bearer {operator_token}"}, checks=CHECKS
    )


@AS_NOBODY.parametrize()
def test_every_operation_answers_nobody_as_documented(case: Any, api_url: str) -> None:
    REQUESTS[f"nobody   {case.operation.label}"] += 1
    case.call_and_validate(base_url=api_url, checks=CHECKS)
