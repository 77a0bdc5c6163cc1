"""Live counters' key layout: the platform's hash and a merchant's never share a key, whatever
the merchant's id (``_all`` was the platform's name in the old layout), written by the
consumer's ``LiveCounters`` and read by the API, against real PostgreSQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest
from redis.asyncio import Redis

from molam_workloads.core.cache import live_key, live_key_patterns
from molam_workloads.core.db import create_pool
from molam_workloads.core.settings import DatabaseSettings
from molam_workloads.ingest.live_counters import LiveCounters

from .conftest import Api
from .seed import hourly, insert_hourly

# Merchant ids that look like platform or key syntax.
TRICKY = ("_all", "platform", "x:2026-01-01", "*")


async def _seed(db: asyncpg.Connection, now: datetime) -> dict[str | None, int]:
    hour = now.replace(minute=0, second=0, microsecond=0)
    counts = {m: 2 + i for i, m in enumerate(TRICKY)}
    rows = [hourly(hour, m, tx_count=n, succeeded_count=n) for m, n in counts.items()]
    rows.append(hourly(hour, None, channel="wallet", tx_count=7, succeeded_count=7))
    await insert_hourly(db, rows)
    return {**counts, None: sum(counts.values()) + 7}


@pytest.fixture
async def counters(database_url: str, redis: Redis) -> LiveCounters:
    return LiveCounters(redis, "USD", ttl_seconds=3600)


async def test_no_merchant_id_names_the_platform_hash(
    api: Api, db: asyncpg.Connection, redis: Redis, database_url: str, counters: LiveCounters
) -> None:
    now = datetime.now(UTC)
    day = now.date()
    expected = await _seed(db, now)
    async with create_pool(DatabaseSettings(database_url=database_url)) as pool:
        assert await counters.refresh(pool, [*TRICKY, None], now) == len(expected)
    keys = {owner: live_key(owner, day) for owner in expected}
    assert len(set(keys.values())) == len(keys)  # one key per owner
    assert keys[None] == f"live:platform:{day.isoformat()}"
    for owner, n in expected.items():
        held = await redis.hgetall(keys[owner])
        assert held["tx_count"] == str(n), owner
        assert held["owner"] == ("platform" if owner is None else f"merchant:{owner}")
        assert 0 < await redis.ttl(keys[owner]) <= 3600
    # The API reads the same keys: the platform for staff, each merchant its own.
    platform = (await api.get("/v1/live")).json()
    assert platform["source"] == "redis" and platform["counters"]["tx_count"] == str(expected[None])
    assert "owner" not in platform["counters"]
    for merchant in TRICKY:
        own = (await api.get("/v1/live", "merchant", merchant)).json()
        assert own["merchant_id"] == merchant and own["source"] == "redis"
        assert own["counters"]["tx_count"] == str(expected[merchant])
    # Backfill's patterns find all of them (merchants and the platform), and nothing else.
    found = {k for p in live_key_patterns(day) async for k in redis.scan_iter(match=p)}
    assert found == set(keys.values())


async def test_an_old_layout_platform_hash_is_never_served_to_merchant_all(
    api: Api, db: asyncpg.Connection, redis: Redis, database_url: str, counters: LiveCounters
) -> None:
    """The platform's hash of the old layout (``live:merchant:_all:<day>``, no owner field)
    outlives the upgrade until its TTL: merchant ``_all`` reads PostgreSQL meanwhile, and the
    consumer replaces it even though its tx_count is higher."""
    now = datetime.now(UTC)
    day = now.date()
    expected = await _seed(db, now)
    old = live_key("_all", day)
    await redis.hset(old, mapping={"tx_count": str(expected[None]), "as_of": "old"})
    await redis.expire(old, 3600)
    before = (await api.get("/v1/live", "merchant", "_all")).json()
    assert before["source"] == "postgresql"
    assert before["counters"]["tx_count"] == str(expected["_all"])
    async with create_pool(DatabaseSettings(database_url=database_url)) as pool:
        await counters.refresh(pool, ["_all"], now)
    held = await redis.hgetall(old)
    assert held["tx_count"] == str(expected["_all"]) and held["owner"] == "merchant:_all"
    after = (await api.get("/v1/live", "merchant", "_all")).json()
    assert after["source"] == "redis" and after["counters"]["tx_count"] == str(expected["_all"])


async def test_an_older_read_of_the_same_owner_still_loses(
    db: asyncpg.Connection, redis: Redis, database_url: str, counters: LiveCounters
) -> None:
    """The owner check does not weaken the rule that a lower tx_count never overwrites."""
    now = datetime.now(UTC)
    expected = await _seed(db, now)
    key = live_key("_all", now.date())
    newer = {"tx_count": str(expected["_all"] + 5), "owner": "merchant:_all", "as_of": "newer"}
    await redis.hset(key, mapping=newer)
    async with create_pool(DatabaseSettings(database_url=database_url)) as pool:
        await counters.refresh(pool, ["_all"], now)
    assert await redis.hgetall(key) == newer
