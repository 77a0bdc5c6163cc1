"""``LiveCounters``' writes, one script call per chunk of hashes, against real Redis (and
PostgreSQL for a refresh): each hash of a chunk is judged on its own, an older read of the same
owner never overwrites a newer one, and a refresh of many merchants leaves PostgreSQL's figures."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import pytest
from redis.asyncio import Redis

from molam_workloads.core.cache import LIVE_EPOCH_KEY, live_key
from molam_workloads.core.db import create_pool
from molam_workloads.core.live import read_totals
from molam_workloads.core.measures import KEYS, MEASURES, MONEY_MEASURES
from molam_workloads.core.settings import DatabaseSettings
from molam_workloads.ingest import live_counters
from molam_workloads.ingest.live_counters import LiveCounters

DAY = date(2026, 12, 7)


def _entry(tx_count: int, owner: str, **extra: str) -> list[object]:
    fields = {"tx_count": str(tx_count), "owner": owner, **extra}
    return [str(tx_count), owner, [x for kv in fields.items() for x in kv]]


async def test_each_hash_of_a_chunk_keeps_the_not_older_rule(redis: Redis) -> None:
    live = LiveCounters(redis, "USD", ttl_seconds=600)
    held = {
        "newer": {"tx_count": "9", "owner": "merchant:newer", "as_of": "held"},
        "equal": {"tx_count": "5", "owner": "merchant:equal", "stale": "x"},
        "older": {"tx_count": "2", "owner": "merchant:older", "stale": "x"},
        # A higher count under another owner (a platform hash of the old layout): replaced.
        "other": {"tx_count": "99", "owner": "platform", "as_of": "held"},
    }
    for m, fields in held.items():
        await redis.hset(live_key(m, DAY), mapping=fields)
    await redis.set(LIVE_EPOCH_KEY, "x")
    owners: list[str | None] = ["newer", "equal", "older", "other", "absent", None]
    doc = json.dumps(
        [
            _entry(5, "merchant:newer", as_of="new"),
            _entry(5, "merchant:equal", as_of="new"),
            _entry(5, "merchant:older", as_of="new"),
            _entry(5, "merchant:other", as_of="new"),
            _entry(1, "merchant:absent", as_of="new"),
            _entry(7, "platform", as_of="new"),
        ]
    )
    assert await live.write(DAY, [(owners, doc)]) is True
    assert await redis.hgetall(live_key("newer", DAY)) == held["newer"]
    for m, n in (("equal", 5), ("older", 5), ("other", 5), ("absent", 1)):
        # Rewritten whole: a field of the held hash that the new read lacks is gone.
        assert await redis.hgetall(live_key(m, DAY)) == {
            "tx_count": str(n),
            "owner": f"merchant:{m}",
            "as_of": "new",
        }, m
        assert 0 < await redis.ttl(live_key(m, DAY)) <= 600
    assert (await redis.hgetall(live_key(None, DAY)))["tx_count"] == "7"
    assert await redis.ttl(live_key("newer", DAY)) == -1  # kept as it was, TTL included
    # Without the epoch key Redis lost its data: the caller is told so (and rebuilds).
    await redis.delete(LIVE_EPOCH_KEY)
    assert (
        await live.write(DAY, [(["absent"], json.dumps([_entry(2, "merchant:absent")]))]) is False
    )
    assert (await redis.hgetall(live_key("absent", DAY)))["tx_count"] == "2"


async def test_a_refresh_of_many_merchants_in_small_chunks_writes_postgresqls_figures(
    db: asyncpg.Connection,
    redis: Redis,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live_counters, "WRITE_CHUNK", 3)
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    # An id that JSON escapes (quotes, a backslash, non-ASCII) among them.
    merchants = [*(f"M-{i:02}" for i in range(7)), 'M-"q\\uote"-é', "M-08", "M-09"]
    cols = ("hour", *KEYS, *MEASURES)
    rows = []
    for i, m in enumerate(merchants[:8]):  # the last two: no transaction today
        keys = {"merchant_id": m, "country": "SN", "currency": "XOF", "channel": "card"}
        measures = {"tx_count": i + 1, "succeeded_count": i + 1, "gross_volume_local": i + 0.5}
        values = {
            k: Decimal(str(measures.get(k, 0))) if k in MONEY_MEASURES else int(measures.get(k, 0))
            for k in MEASURES
        }
        rows.append((hour, *(keys[k] for k in KEYS), *(values[k] for k in MEASURES)))
    await db.executemany(
        f"INSERT INTO txn_hourly_agg ({', '.join(cols)})"
        f" VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))})",
        rows,
    )
    live = LiveCounters(redis, "USD", ttl_seconds=600)
    await redis.set(LIVE_EPOCH_KEY, "x")
    async with create_pool(DatabaseSettings(database_url=database_url)) as pool:
        assert await live.refresh(pool, [*merchants, None], now) == len(merchants) + 1
        expected = await read_totals(db, now.date(), merchants, "USD", now)
        assert len(expected) == len(merchants) + 1
        for owner, fields in expected.items():
            assert await redis.hgetall(live_key(owner, now.date())) == fields, owner
        # Losing the epoch key: the next refresh rebuilds every merchant with rows today.
        await redis.flushdb()
        assert await live.refresh(pool, ["M-00"], now) == 9  # 8 merchants and the platform
        assert live.rebuilds == 1 and await redis.exists(LIVE_EPOCH_KEY)
        rebuilt = await read_totals(db, now.date(), merchants[:8], "USD", now)
        for owner, fields in rebuilt.items():
            assert await redis.hgetall(live_key(owner, now.date())) == fields, owner
