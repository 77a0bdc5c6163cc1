"""Cache hits of requests already answered (``fastpath.CachedAnswers``): the same bytes, the
same counters and histograms, and never past a refusal, an expired token or a moving range."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from molam_workloads.api.fastpath import CachedAnswers
from molam_workloads.core.metrics import (
    API_LATENCY,
    API_REQUESTS,
    AUTH_DENIALS,
    CACHE_HITS,
    CACHE_MISSES,
)

from .conftest import Api, make_token
from .test_cache import seed

URL = "/v1/kpis?from=2025-07-01&to=2025-07-02"


def fastpath(api: Api) -> CachedAnswers:
    layer: Any = api.app.middleware_stack
    while not isinstance(layer, CachedAnswers):
        layer = layer.app
    return layer


def counts() -> tuple[float, float]:
    return CACHE_HITS._value.get(), CACHE_MISSES._value.get()


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def requests_count(route: str, status: str = "200") -> float:
    return API_REQUESTS.labels("GET", route, status)._value.get()


def latency_count(route: str) -> float:
    return sum(b.get() for b in API_LATENCY.labels("GET", route)._buckets)


async def test_a_repeated_request_is_the_same_answer_counted_once(
    api: Api, db: asyncpg.Connection
) -> None:
    await seed(db)
    token = make_token("admin")
    first = await api.client.get(URL, headers=headers(token))  # FastAPI: miss, remembered
    assert first.headers["x-cache"] == "miss"
    assert len(fastpath(api).learned) == 1
    remembered = dict(fastpath(api).learned)
    fastpath(api).learned.clear()
    through_fastapi = await api.client.get(URL, headers=headers(token))  # FastAPI's own hit
    assert fastpath(api).learned == remembered  # the same key learned again
    hits, misses = counts()
    n, observed = requests_count("/v1/kpis"), latency_count("/v1/kpis")
    served = await api.client.get(URL, headers=headers(token))  # answered by the fast path
    assert counts() == (hits + 1, misses)
    assert requests_count("/v1/kpis") == n + 1 and latency_count("/v1/kpis") == observed + 1
    assert served.status_code == through_fastapi.status_code == 200
    assert served.content == through_fastapi.content
    assert served.headers.raw == through_fastapi.headers.raw


async def test_fastpath_is_taken(api: Api, db: asyncpg.Connection, redis: Redis) -> None:
    """The fast path answers without FastAPI: with the route's handler unable to run at all,
    a remembered request is still answered from Redis (and a new one is not)."""
    await seed(db)
    token = make_token("admin")
    assert (await api.client.get(URL, headers=headers(token))).status_code == 200
    layer = fastpath(api)
    real = layer.app

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("FastAPI was called")

    layer.app = broken
    try:
        r = await api.client.get(URL, headers=headers(token))
        assert (r.status_code, r.headers["x-cache"]) == (200, "hit")
        assert r.json()["kpis"]["tx_count"] == 21
        r = await api.client.get(URL + "&tz=UTC", headers=headers(token))
        assert r.status_code == 500  # not remembered: went to the (broken) app
    finally:
        layer.app = real


async def test_a_miss_falls_through_and_is_counted_once(
    api: Api, db: asyncpg.Connection, redis: Redis
) -> None:
    await seed(db)
    token = make_token("admin")
    await api.client.get(URL, headers=headers(token))
    assert len(fastpath(api).learned) == 1
    await redis.flushdb()  # the entry expired
    hits, misses = counts()
    r = await api.client.get(URL, headers=headers(token))
    assert r.headers["x-cache"] == "miss" and r.json()["kpis"]["tx_count"] == 21
    assert counts() == (hits, misses + 1)


async def test_route_labels_of_a_path_parameter(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    token = make_token("analyst")
    url = "/v1/breakdowns/merchant?from=2025-07-01&to=2025-07-02"
    route = "/v1/breakdowns/{dimension}"
    await api.client.get(url, headers=headers(token))
    n, observed = requests_count(route), latency_count(route)
    r = await api.client.get(url, headers=headers(token))
    assert r.headers["x-cache"] == "hit"
    assert requests_count(route) == n + 1 and latency_count(route) == observed + 1
    # another dimension is another request: not answered with the merchant breakdown
    other = await api.client.get(url.replace("merchant?", "country?"), headers=headers(token))
    assert other.headers["x-cache"] == "miss" and other.json()["dimension"] == "country"


async def test_a_moving_range_is_never_remembered(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    token = make_token("admin")
    for url in ("/v1/kpis", "/v1/kpis?from=2025-07-01", "/v1/kpis?from=2025-07-01&to="):
        await api.client.get(url, headers=headers(token))
        await api.client.get(url, headers=headers(token))
    assert len(fastpath(api).learned) == 0


async def test_refusals_are_never_remembered(
    api: Api, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(db)
    token = make_token("merchant", "M-1")
    own = await api.client.get(URL, headers=headers(token))
    assert own.json()["kpis"]["tx_count"] == 1
    denials = AUTH_DENIALS.labels("403")._value.get()
    with caplog.at_level(logging.WARNING, logger="molam_workloads.api.auth"):
        for _ in range(2):
            r = await api.client.get(URL + "&merchant_id=M-2", headers=headers(token))
            assert r.status_code == 403
            r = await api.client.get(
                "/v1/top-merchants?from=2025-07-01&to=2025-07-02", headers=headers(token)
            )
            assert r.status_code == 403
    assert AUTH_DENIALS.labels("403")._value.get() == denials + 4
    assert sum("denied GET" in rec.getMessage() for rec in caplog.records) == 4
    assert len(fastpath(api).learned) == 1  # the merchant's own answer only
    again = await api.client.get(URL, headers=headers(token))
    assert again.headers["x-cache"] == "hit" and again.json()["kpis"]["tx_count"] == 1


async def test_an_expired_token_is_refused_again(
    api: Api, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(db)
    exp = int(time.time()) + 2
    token = make_token("admin", exp_in=exp - time.time())
    assert (await api.client.get(URL, headers=headers(token))).status_code == 200
    assert (await api.client.get(URL, headers=headers(token))).headers["x-cache"] == "hit"
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.1)
    denials = AUTH_DENIALS.labels("401")._value.get()
    with caplog.at_level(logging.WARNING, logger="molam_workloads.api.auth"):
        r = await api.client.get(URL, headers=headers(token))
    assert r.status_code == 401 and r.json()["error"]["message"] == "token expired"
    assert AUTH_DENIALS.labels("401")._value.get() == denials + 1
    assert any("token expired" in rec.getMessage() for rec in caplog.records)


async def test_not_for_other_methods_or_malformed_headers(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    token = make_token("admin")
    await api.client.get(URL, headers=headers(token))
    assert (await api.client.head(URL, headers=headers(token))).status_code == 405
    r = await api.client.get(URL, headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 401
