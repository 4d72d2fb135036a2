"""JWT: a forged, stale, misdirected or misplaced token opens neither the REST API nor the NOC
WebSocket. Every case is tried at both doors of one live Daphne; tokens are forged with PyJWT.

The identities are made once for the module (no test writes to the database), so the cases
cost a request each.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_encode
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from websockets.asyncio.client import connect

from apps.noc.auth import issue_access_token, issue_refresh_token
from apps.noc.operators import grant_operator_permissions
from apps.tenants.models import Tenant, User
from tests.noc.test_websocket import bearer, close_code, next_message, url

# The tests only read (through Daphne); the mark makes pytest-django create the test database
# when this module runs alone.
pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Operator:
    """An operator of acme with the NOC permission, and what the cases need of it."""

    user_id: int
    tenant_id: int
    foreign_tenant_id: int
    access_token: str
    refresh_token: str


@pytest.fixture(scope="module")
def alice(django_db_setup: None, django_db_blocker: Any, daphne_server: int) -> Iterator[Operator]:
    with django_db_blocker.unblock():
        acme = Tenant.objects.create(name="jwt-acme")
        globex = Tenant.objects.create(name="jwt-globex")
        user = User.objects.create_user(username="jwt-alice", tenant=acme)  # no password: fast
        grant_operator_permissions(user)
        tokens = issue_access_token(user), str(issue_refresh_token(user))
    yield Operator(user.pk, acme.pk, globex.pk, *tokens)
    with django_db_blocker.unblock():
        OutstandingToken.objects.filter(user=user).delete()
        user.delete()
        Tenant.objects.filter(pk__in=[acme.pk, globex.pk]).delete()


def claims(operator: Operator, **overrides: Any) -> dict[str, Any]:
    """A valid access token's claims, then the overrides (None removes a claim)."""
    now = int(time.time())
    base = {
        "token_type": "access",
        "user_id": str(operator.user_id),
        "tenant_id": operator.tenant_id,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "aud": settings.JWT_AUDIENCE,
        "iss": settings.JWT_ISSUER,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def signed(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, settings.JWT_SIGNING_KEY, algorithm="HS256")


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def hs256_keyed_with(payload: dict[str, Any], secret: bytes) -> str:
    """HS256 with any bytes as the secret: PyJWT's encode refuses a PEM key, its HMAC does not."""
    header = base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = base64url_encode(json.dumps(payload).encode())
    signature = HMACAlgorithm(HMACAlgorithm.SHA256).sign(header + b"." + body, secret)
    return (header + b"." + body + b"." + base64url_encode(signature)).decode()


@dataclass(frozen=True)
class Presented:
    """How a client presents a token: in the Authorization header, or in the URL."""

    token: str
    in_query: bool = False


def alg_none(alice: Operator) -> Presented:
    return Presented(jwt.encode(claims(alice), None, algorithm="none"))


def rs256_with_a_key_of_its_own(alice: Operator) -> Presented:
    return Presented(jwt.encode(claims(alice), RSA_PRIVATE_PEM, algorithm="RS256"))


def hs256_keyed_with_an_rsa_public_key(alice: Operator) -> Presented:
    return Presented(hs256_keyed_with(claims(alice), RSA_PUBLIC_PEM))


def bad_signature(alice: Operator) -> Presented:
    header, body, _ = alice.access_token.split(".")
    other = jwt.encode(claims(alice), "another key, 32 characters or more", algorithm="HS256")
    return Presented(f"{header}.{body}.{other.rsplit('.', 1)[1]}")


def expired(alice: Operator) -> Presented:
    past = int(time.time()) - 3600
    return Presented(signed(claims(alice, iat=past, nbf=past, exp=past + 300)))


def not_yet_valid(alice: Operator) -> Presented:
    future = int(time.time()) + 600
    return Presented(signed(claims(alice, nbf=future, exp=future + 300)))


def wrong_audience(alice: Operator) -> Presented:
    return Presented(signed(claims(alice, aud="another-service")))


def wrong_issuer(alice: Operator) -> Presented:
    return Presented(signed(claims(alice, iss="someone-else")))


def missing_tenant(alice: Operator) -> Presented:
    return Presented(signed(claims(alice, tenant_id=None)))


def foreign_tenant(alice: Operator) -> Presented:
    return Presented(signed(claims(alice, tenant_id=alice.foreign_tenant_id)))


def refresh_token_as_access(alice: Operator) -> Presented:
    return Presented(alice.refresh_token)


def valid_token_in_the_url(alice: Operator) -> Presented:
    return Presented(alice.access_token, in_query=True)


REFUSED: list[Callable[[Operator], Presented]] = [
    alg_none,
    rs256_with_a_key_of_its_own,
    hs256_keyed_with_an_rsa_public_key,
    bad_signature,
    expired,
    not_yet_valid,
    wrong_audience,
    wrong_issuer,
    missing_tenant,
    foreign_tenant,
    refresh_token_as_access,
    valid_token_in_the_url,
]


def rest_status(port: int, presented: Presented) -> int:
    """The status of GET /api/alerts/ with the token as presented."""
    query = f"?token={presented.token}" if presented.in_query else ""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/alerts/{query}")
    if not presented.in_query:
        request.add_header("Authorization", f"Bearer {presented.token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (http only)
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def websocket_close_code(port: int, presented: Presented) -> int | None:
    if presented.in_query:
        return asyncio.run(close_code(port, query=f"?token={presented.token}"))
    return asyncio.run(close_code(port, additional_headers=bearer(presented.token)))


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.__name__)
def test_the_rest_api_refuses_the_token_with_401(daphne_server: int, alice: Operator, case):
    assert rest_status(daphne_server, case(alice)) == 401


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.__name__)
def test_the_websocket_refuses_the_token_with_4401(daphne_server: int, alice: Operator, case):
    assert websocket_close_code(daphne_server, case(alice)) == 4401


def test_a_valid_token_opens_both_doors(daphne_server: int, alice: Operator):
    """The control: the refusals above are the token's doing, not the operator's or the door's."""
    for token in (alice.access_token, signed(claims(alice))):
        assert rest_status(daphne_server, Presented(token)) == 200

        async def greeting(token: str = token) -> dict[str, Any]:
            async with connect(url(daphne_server), additional_headers=bearer(token)) as ws:
                return await next_message(ws)

        assert asyncio.run(greeting()) == {"type": "connected", "tenant_id": alice.tenant_id}
