"""Bearer token edge cases: 401 for tokens that cannot be trusted, 403 for trusted tokens that
grant nothing; every refusal logged and counted."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from molam_workloads.core.metrics import AUTH_DENIALS

from .conftest import SECRET, Api, api_settings, make_token, running_api


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _none_alg_token() -> str:
    claims = {"sub": "x", "role": "admin", "exp": int(time.time()) + 300}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


UNAUTHORIZED = {
    "missing": None,
    "empty bearer": "Bearer ",
    "basic scheme": "Basic dXNlcjpwYXNz",
    "malformed": "Bearer not.a.jwt",
    "garbage": "Bearer abc",
    "alg none": f"Bearer {_none_alg_token()}",
    "HS512": f"Bearer {make_token('admin', algorithm='HS512')}",
    "wrong signature": f"Bearer {make_token('admin', secret='another-secret-0123456789-abcdefgh')}",
    "expired": f"Bearer {make_token('admin', exp_in=-10)}",
    "no exp": f"Bearer {make_token('admin', exp_in=None)}",
    "no role": f"Bearer {make_token(None)}",
    "tampered": "Bearer "
    + make_token("analyst").rsplit(".", 2)[0]
    + "."
    + _b64({"sub": "x", "role": "admin", "exp": int(time.time()) + 300})
    + "."
    + make_token("analyst").rsplit(".", 1)[1],
}


@pytest.mark.parametrize("header", list(UNAUTHORIZED.values()), ids=list(UNAUTHORIZED))
async def test_untrusted_tokens_are_401(
    module_api: Api, header: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    before = AUTH_DENIALS.labels("401")._value.get()
    headers = {"Authorization": header} if header is not None else {}
    with caplog.at_level(logging.WARNING, logger="molam_workloads.api.auth"):
        r = await module_api.client.get("/v1/kpis", headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"
    assert AUTH_DENIALS.labels("401")._value.get() == before + 1
    assert any("denied GET /v1/kpis" in rec.getMessage() for rec in caplog.records)


# Minted when the test runs, not at collection: a long suite would see them expired.
FORBIDDEN = {
    "unknown role": lambda: make_token("superuser"),
    "merchant without merchant_id": lambda: make_token("merchant"),
    "merchant with empty merchant_id": lambda: jwt.encode(
        {"sub": "x", "role": "merchant", "merchant_id": "", "exp": int(time.time()) + 300},
        SECRET,
        algorithm="HS256",
    ),
}


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("unknown role", 403),
        ("merchant without merchant_id", 403),
        ("merchant with empty merchant_id", 401),  # an ill-typed claim
    ],
    ids=list(FORBIDDEN),
)
async def test_tokens_that_grant_nothing(module_api: Api, kind: str, status: int) -> None:
    token = FORBIDDEN[kind]()
    before = AUTH_DENIALS.labels(str(status))._value.get()
    r = await module_api.client.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == ("forbidden" if status == 403 else "unauthorized")
    assert AUTH_DENIALS.labels(str(status))._value.get() == before + 1


async def test_merchant_denial_is_logged(module_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    token = make_token("merchant", "M-1", sub="shop-1")
    with caplog.at_level(logging.WARNING, logger="molam_workloads.api.auth"):
        r = await module_api.client.get(
            "/v1/kpis?merchant_id=M-2", headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 403
    assert r.json()["error"]["message"] == "a merchant token may only read its own merchant's data"
    assert any(
        "sub=shop-1" in rec.getMessage() and "merchant_id=M-1" in rec.getMessage()
        for rec in caplog.records
    )


async def test_valid_token(module_api: Api) -> None:
    r = await module_api.client.get(
        "/v1/me", headers={"Authorization": f"Bearer {make_token('ops', sub='alice')}"}
    )
    assert r.status_code == 200
    assert r.json() == {
        "sub": "alice",
        "role": "ops",
        "merchant_id": None,
        "reads_all_merchants": True,
        "reporting_currency": "USD",
    }


def test_token_cache_holds_a_principal_until_its_exp() -> None:
    from molam_workloads.api.auth import Principal, Role, TokenCache

    now = [1000.0]
    cache = TokenCache(size=2, clock=lambda: now[0])
    alice = Principal("alice", Role.admin, None)
    cache.put("t-alice", alice, exp=1010.0)
    assert cache.get("t-alice") is alice
    now[0] = 1009.999
    assert cache.get("t-alice") is alice
    now[0] = 1010.0  # PyJWT refuses from exp on: so does the cache, and forgets it
    assert cache.get("t-alice") is None
    assert len(cache) == 0


def test_token_cache_is_bounded_least_recently_used_out() -> None:
    from molam_workloads.api.auth import Principal, Role, TokenCache

    cache = TokenCache(size=2, clock=lambda: 0.0)
    a, b, c = (Principal(n, Role.analyst, None) for n in "abc")
    cache.put("a", a, 10.0)
    cache.put("b", b, 10.0)
    assert cache.get("a") is a  # a used last: b goes first
    cache.put("c", c, 10.0)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is a and cache.get("c") is c


async def test_a_cached_token_is_refused_once_expired(module_api: Api) -> None:
    """The API verifies a token once, then serves its principal from the cache: until exp,
    after which the token is a 401 again (verified anew, refused, counted)."""
    import asyncio

    tokens = module_api.app.state.resources.tokens
    token = make_token("analyst", exp_in=1.5)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await module_api.client.get("/v1/me", headers=headers)).status_code == 200
    assert tokens.get(token) is not None
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
    before = AUTH_DENIALS.labels("401")._value.get()
    response = await module_api.client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "token expired"
    assert AUTH_DENIALS.labels("401")._value.get() == before + 1
    assert tokens.get(token) is None


async def test_a_cached_token_keeps_its_role_and_merchant(module_api: Api) -> None:
    """The cache is keyed by the whole token: a merchant token served from it is still scoped
    to its merchant and refused elsewhere (403 each time, each time counted)."""
    token = make_token("merchant", "M-1")
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(2):
        me = await module_api.client.get("/v1/me", headers=headers)
        assert me.status_code == 200 and me.json()["merchant_id"] == "M-1"
        before = AUTH_DENIALS.labels("403")._value.get()
        other = await module_api.client.get("/v1/kpis?merchant_id=M-2", headers=headers)
        assert other.status_code == 403
        assert AUTH_DENIALS.labels("403")._value.get() == before + 1
        top = await module_api.client.get("/v1/top-merchants", headers=headers)
        assert top.status_code == 403


# ---- lifetime, issuer and audience, key rotation ---------------------------------------------

OLD_KEY = "previous-key-0123456789-abcdefghijklmnop"
RETIRED_KEY = "retired-key-0123456789-abcdefghijklmnopq"
NEW_KEY = "current-key-0123456789-abcdefghijklmnopqr"


@pytest.fixture(scope="module")
async def strict_api(module_db: str, module_redis_url: str) -> AsyncIterator[Api]:
    """An API with a rotated key, a one-hour maximum lifetime, an issuer and an audience."""
    settings = api_settings(
        module_db,
        module_redis_url,
        analytics_jwt_secret=NEW_KEY,
        analytics_jwt_previous_secrets=f" {OLD_KEY} , ",
        analytics_jwt_max_lifetime_seconds=3600,
        analytics_jwt_issuer="https://id.molam.example",
        analytics_jwt_audience="molam-analytics",
    )
    async with running_api(settings) as api:
        yield api


def _strict(secret: str = NEW_KEY, **claims: Any) -> str:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "rotator",
        "role": "analyst",
        "iat": now,
        "exp": now + 600,
        "iss": "https://id.molam.example",
        "aud": "molam-analytics",
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, secret, algorithm="HS256")


STRICT_REFUSED = {
    "exp - iat above the maximum": lambda: _strict(exp=int(time.time()) + 3601),
    "no iat and exp beyond the maximum": lambda: _strict(iat=None, exp=int(time.time()) + 7200),
    "iat in the future": lambda: _strict(iat=int(time.time()) + 3000),
    "no exp": lambda: _strict(exp=None),
    "no iss": lambda: _strict(iss=None),
    "another iss": lambda: _strict(iss="https://evil.example"),
    "no aud": lambda: _strict(aud=None),
    "another aud": lambda: _strict(aud="another-service"),
    "a retired key": lambda: _strict(secret=RETIRED_KEY),
}


@pytest.mark.parametrize("kind", list(STRICT_REFUSED))
async def test_strict_policy_refuses(strict_api: Api, kind: str) -> None:
    before = AUTH_DENIALS.labels("401")._value.get()
    token = STRICT_REFUSED[kind]()
    r = await strict_api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, (kind, r.text)
    assert AUTH_DENIALS.labels("401")._value.get() == before + 1


async def test_rotated_keys_verify_and_the_first_signs(strict_api: Api) -> None:
    from molam_workloads.api.auth import Role, issue_token

    accepted = {
        "current key": _strict(),
        "previous key": _strict(secret=OLD_KEY),
        "no iat, within the maximum": _strict(iat=None, exp=int(time.time()) + 3000),
        "exactly the maximum": _strict(exp=int(time.time()) + 3600),
    }
    for kind, token in accepted.items():
        r = await strict_api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, (kind, r.text)
    policy = strict_api.app.state.resources.token_policy
    assert policy.keys == (NEW_KEY, OLD_KEY)
    shown = repr(strict_api.app.state.resources)  # what logging the resources would print
    assert NEW_KEY not in shown and OLD_KEY not in shown
    issued = issue_token(policy, "svc", Role.ops, lifetime_seconds=10 * 86400)
    claims = jwt.decode(
        issued, NEW_KEY, algorithms=["HS256"], audience="molam-analytics", issuer=policy.issuer
    )
    assert claims["exp"] - claims["iat"] == 3600  # capped at the maximum
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(issued, OLD_KEY, algorithms=["HS256"], audience="molam-analytics")
    r = await strict_api.client.get("/v1/me", headers={"Authorization": f"Bearer {issued}"})
    assert r.status_code == 200 and r.json()["role"] == "ops"


async def test_without_a_configured_audience_a_token_with_one_is_refused(module_api: Api) -> None:
    """A token minted for another service (it names its audience) is not ours to accept."""
    token = make_token("admin", aud="another-service")
    r = await module_api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_previous_keys_must_be_long_enough() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least 32 characters"):
        api_settings(
            "postgresql://u@127.0.0.1/db",
            "redis://127.0.0.1:1/0",
            analytics_jwt_previous_secrets=f"{OLD_KEY},short",
        )
