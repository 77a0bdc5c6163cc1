"""The summary cache: keyed by role, merchant and parameters; counted; optional."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis

from molam_workloads.core.metrics import CACHE_HITS, CACHE_MISSES

from .conftest import Api, api_settings, auth, running_api
from .seed import hourly, insert_hourly

T = datetime(2025, 7, 1, 10, tzinfo=UTC)
URL = "/v1/kpis?from=2025-07-01&to=2025-07-02"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def seed(db: asyncpg.Connection) -> None:
    await insert_hourly(
        db,
        [
            hourly(T, "M-1", tx_count=1, succeeded_count=1),
            hourly(T, "M-2", tx_count=20, succeeded_count=20),
        ],
    )


async def test_hits_and_misses_are_counted(api: Api, db: asyncpg.Connection, redis: Redis) -> None:
    await seed(db)
    hits, misses = CACHE_HITS._value.get(), CACHE_MISSES._value.get()
    first = await api.get(URL)
    second = await api.get(URL)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == second.json()
    assert CACHE_HITS._value.get() == hits + 1 and CACHE_MISSES._value.get() == misses + 1
    keys = await redis.keys("analytics:*")
    assert len(keys) == 1 and keys[0].startswith("analytics:kpis:admin:*:")
    assert 0 < await redis.ttl(keys[0]) <= api.settings.cache_ttl_seconds


async def test_one_role_or_merchant_never_gets_anothers_answer(
    api: Api, db: asyncpg.Connection, redis: Redis
) -> None:
    await seed(db)
    everyone = await api.get(URL, "admin")
    assert everyone.json()["kpis"]["tx_count"] == 21
    m1 = await api.get(URL, "merchant", "M-1")
    m2 = await api.get(URL, "merchant", "M-2")
    assert m1.headers["x-cache"] == m2.headers["x-cache"] == "miss"
    assert (m1.json()["kpis"]["tx_count"], m2.json()["kpis"]["tx_count"]) == (1, 20)
    # the same merchant again: its own cached answer
    again = await api.get(URL, "merchant", "M-1")
    assert again.headers["x-cache"] == "hit" and again.json()["kpis"]["tx_count"] == 1
    # staff roles asking for the same thing do not share entries either
    analyst = await api.get(URL, "analyst")
    assert analyst.headers["x-cache"] == "miss"
    # an admin asking for M-1 explicitly is another entry than the merchant's own
    admin_m1 = await api.get(URL + "&merchant_id=M-1", "admin")
    assert admin_m1.headers["x-cache"] == "miss" and admin_m1.json()["kpis"]["tx_count"] == 1
    scopes = {k.split(":")[2] + ":" + k.split(":")[3] for k in await redis.keys("analytics:*")}
    assert scopes == {"admin:*", "merchant:M-1", "merchant:M-2", "analyst:*"}


async def test_ttl_zero_disables_the_cache(
    database_url: str, redis_url: str, db: asyncpg.Connection, redis: Redis
) -> None:
    await seed(db)
    async with running_api(api_settings(database_url, redis_url, cache_ttl_seconds=0)) as api:
        assert (await api.get(URL)).headers["x-cache"] == "miss"
        assert (await api.get(URL)).headers["x-cache"] == "miss"
    assert await redis.keys("analytics:*") == []


async def test_redis_outage_degrades_to_uncached(database_url: str, db: asyncpg.Connection) -> None:
    await seed(db)
    down = f"redis://127.0.0.1:{closed_port()}/0"
    async with running_api(api_settings(database_url, down)) as api:
        for _ in range(2):
            r = await api.get(URL)
            assert r.status_code == 200 and r.headers["x-cache"] == "miss"
            assert r.json()["kpis"]["tx_count"] == 21
        live = await api.client.get("/v1/live?merchant_id=M-1", headers=auth("ops"))
        assert live.status_code == 200 and live.json()["source"] == "postgresql"


async def test_concurrent_lookups_are_one_mget(redis_url: str, redis: Redis) -> None:
    from molam_workloads.api.cache import ResponseCache

    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        cache = ResponseCache(client, 30)
        await redis.set("analytics:a", b'{"a":1}')
        await redis.set("analytics:b", "é".encode())
        calls: list[list[str]] = []
        real = client.mget

        async def mget(keys: list[str]) -> Any:
            calls.append(list(keys))
            return await real(keys)

        client.mget = mget  # type: ignore[method-assign]
        got = await asyncio.gather(
            cache.lookup("analytics:a"), cache.lookup("analytics:none"), cache.lookup("analytics:b")
        )
        assert got == [b'{"a":1}', None, "é".encode()]
        assert calls == [["analytics:a", "analytics:none", "analytics:b"]]
        assert await cache.lookup("analytics:a") == b'{"a":1}'  # alone: a batch of one
        assert calls[-1] == ["analytics:a"]
        hits, misses = CACHE_HITS._value.get(), CACHE_MISSES._value.get()
        assert await asyncio.gather(cache.get("analytics:a"), cache.get("analytics:x")) == [
            b'{"a":1}',
            None,
        ]
        assert (CACHE_HITS._value.get(), CACHE_MISSES._value.get()) == (hits + 1, misses + 1)
    finally:
        await client.aclose()


async def test_a_failed_batch_is_a_miss_for_each_and_backs_off() -> None:
    from molam_workloads.api.cache import ResponseCache

    client = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1.0)
    try:
        cache = ResponseCache(client, 30)
        misses = CACHE_MISSES._value.get()
        assert await asyncio.gather(cache.get("analytics:a"), cache.get("analytics:b")) == [
            None,
            None,
        ]
        assert CACHE_MISSES._value.get() == misses + 2
        assert not cache.enabled  # Redis left alone for a few seconds
    finally:
        await client.aclose()


async def test_an_unexpected_error_reaches_each_caller() -> None:
    from molam_workloads.api.cache import ResponseCache

    class Broken:
        async def mget(self, keys: list[str]) -> Any:
            raise ValueError("boom")

    cache = ResponseCache(Broken(), 30)  # type: ignore[arg-type]
    results = await asyncio.gather(
        cache.lookup("analytics:a"), cache.lookup("analytics:b"), return_exceptions=True
    )
    assert [type(r) for r in results] == [ValueError, ValueError]
