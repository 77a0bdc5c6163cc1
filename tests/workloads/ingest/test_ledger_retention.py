"""Ledger retention (LEDGER_RETENTION_DAYS) against the real PostgreSQL, broker and consumer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
from helpers.ingest import Stack, make_events, publish, read_topic, running_consumer, wait_until
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from molam_workloads.core.db import create_pool
from molam_workloads.core.events import encode_event
from molam_workloads.core.settings import DatabaseSettings
from molam_workloads.ingest import ledger

NOW = datetime(2025, 7, 1, 12, tzinfo=UTC)


def test_the_horizons() -> None:
    assert ledger.oldest_accepted(NOW, 0) is None
    assert ledger.oldest_accepted(NOW, 30) == NOW - timedelta(days=30)
    assert ledger.trim_before(NOW, 30) == NOW - timedelta(days=31)


async def _ledger_rows(db: asyncpg.Connection, ages_days: list[float], prefix: str) -> None:
    await db.executemany(
        "INSERT INTO ingested_transactions (txn_id, occurred_at, source) VALUES ($1, $2, 'stream')",
        [(f"{prefix}-{i}", datetime.now(UTC) - timedelta(days=a)) for i, a in enumerate(ages_days)],
    )


async def test_trim_deletes_only_rows_before_the_horizon_in_chunks(
    db: asyncpg.Connection, database_url: str
) -> None:
    old = [40.0] * (ledger.TRIM_CHUNK + 5)  # more than one chunk
    await _ledger_rows(db, old, "old")
    await _ledger_rows(db, [30.5, 1.0, 0.0], "kept")
    async with create_pool(DatabaseSettings(database_url=database_url), max_size=2) as pool:
        deleted = await ledger.trim(pool, ledger.trim_before(datetime.now(UTC), 30))
    assert deleted == len(old)
    left = await db.fetch("SELECT txn_id FROM ingested_transactions ORDER BY txn_id")
    assert [r[0] for r in left] == ["kept-0", "kept-1", "kept-2"]


async def test_old_events_go_to_the_dlq_and_old_ledger_rows_are_trimmed(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    await _ledger_rows(db, [45.0, 30.5], "ledger")  # the first is past 30 days + the margin
    recent = make_events(10, seed=3)
    ancient = make_events(2, seed=4, start=datetime.now(UTC) - timedelta(days=40), prefix="A")
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in recent + ancient])

    async with running_consumer(ledger_retention_days=30):
        await wait_until(lambda: _rows(db, "T-%", 10))
        dead = await read_topic(stack.bootstrap, stack.dlq, 2)
        await wait_until(lambda: _rows(db, "ledger-0", 0))

    assert REGISTRY.get_sample_value("analytics_ledger_trimmed_rows_total") >= 1
    docs = [json.loads(d) for d in dead]
    assert {d["reason"] for d in docs} == {"beyond_ledger_retention"}
    assert all("LEDGER_RETENTION_DAYS=30" in d["detail"] for d in docs)
    assert await db.fetchval("SELECT sum(tx_count) FROM txn_hourly_agg") == 10
    kept = await db.fetchval("SELECT count(*) FROM ingested_transactions WHERE txn_id = 'ledger-1'")
    assert kept == 1  # 30.5 days old: inside the margin


async def _rows(db: asyncpg.Connection, like: str, expect: int) -> bool:
    sql = "SELECT count(*) FROM ingested_transactions WHERE txn_id LIKE $1"
    return int(await db.fetchval(sql, like)) == expect
