"""Backfill: equal to ingestion, idempotent, and never double counting with the stream."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers.ingest import (
    Stack,
    assert_live_matches_db,
    assert_totals_match_source,
    counted,
    insert_source,
    make_events,
    publish,
    running_consumer,
    today_span,
    wait_until,
    with_duplicates,
)
from redis.asyncio import Redis

from molam_workloads.core.cache import LIVE_EPOCH_KEY, live_key, live_key_patterns
from molam_workloads.core.db import create_pool
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.events import TransactionEvent, encode_event
from molam_workloads.core.settings import DatabaseSettings
from molam_workloads.jobs import backfill

CLI = str(Path(sys.executable).with_name("molam-analytics"))
ROW = (
    "hour, merchant_id, country, currency, channel, tx_count, succeeded_count, failed_count,"
    " pending_count, gross_volume_local, payment_count, payment_volume_local, refund_count,"
    " refund_volume_local, payout_count, payout_volume_local, transfer_count,"
    " transfer_volume_local, fee_local"
)


async def _snapshot(db: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await db.fetch(f"SELECT {ROW} FROM txn_hourly_agg ORDER BY {ROW}")
    return [tuple(r) for r in rows]


async def _minutes(db: asyncpg.Connection) -> list[tuple[object, ...]]:
    # Away from the 48 h horizon, whose edge moves between the stream's and backfill's "now".
    cols = ROW.replace("hour", "minute", 1)
    rows = await db.fetch(
        f"SELECT {cols} FROM txn_minute_agg WHERE minute >= now() - interval '47 hours'"
        f" ORDER BY {cols}"
    )
    return [tuple(r) for r in rows]


def _days(events: list[TransactionEvent]) -> list[date]:
    first = min(e.occurred_at for e in events).date()
    last = max(e.occurred_at for e in events).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


async def _ledger(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ingested_transactions"))


async def test_backfill_equals_ingestion_and_rerun_is_identical(
    stack: Stack, db: asyncpg.Connection
) -> None:
    events = make_events(800, seed=51, span=timedelta(days=3))
    await insert_source(db, events)
    await publish(stack.bootstrap, stack.topic, with_duplicates(events, 0.1))
    async with running_consumer():
        await wait_until(lambda: _at(db, len(events)))
    streamed = await _snapshot(db)
    streamed_minutes = await _minutes(db)
    assert streamed_minutes

    days = _days(events)
    assert await backfill.backfill(db, days, 48, show=False) == len(events)
    assert await _snapshot(db) == streamed
    assert await _minutes(db) == streamed_minutes

    await backfill.backfill(db, days, 48, show=False)
    assert await _snapshot(db) == streamed
    assert await counted(db) == len(events)
    await assert_totals_match_source(db)


async def _at(db: asyncpg.Connection, n: int) -> bool:
    return await _ledger(db) >= n


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan, depth first."""
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


async def test_the_ledger_insert_never_plans_a_nested_loop_on_stale_statistics(
    db: asyncpg.Connection,
) -> None:
    # Statistics taken on an empty ledger, then a day's rows inserted: the next day's plan
    # estimates its ledger rows at almost none. A nested anti-join over them would be
    # quadratic in the rows inserted since; the day's settings leave the planner a hash join.
    await db.execute("ANALYZE ingested_transactions")
    start = datetime(2025, 4, 1, tzinfo=UTC)
    await insert_source(db, make_events(300, seed=91, start=start + timedelta(days=2)))
    await db.execute(
        "INSERT INTO ingested_transactions (txn_id, occurred_at, source)"
        " SELECT 'X-' || g, $1::timestamptz + g * interval '1 s', 'stream'"
        " FROM generate_series(1, 5000) g",
        start + timedelta(days=1),
    )
    day = (start + timedelta(days=1), start + timedelta(days=2))
    async with db.transaction():
        await db.execute(backfill.DAY_SETTINGS)
        explained = await db.fetchval("EXPLAIN (FORMAT JSON) " + backfill.LEDGER_SQL, *day)
    # Node types and join types, not the text: PostgreSQL 16+ prints "Hash Right Anti Join"
    # where 15 prints "Hash Anti Join" (join type "Right Anti" against "Anti").
    plan = json.loads(explained)[0]["Plan"]
    nodes = {(n["Node Type"], n.get("Join Type")) for n in _plan_nodes(plan)}
    assert not any(kind == "Nested Loop" for kind, _ in nodes), explained
    assert any(
        kind in ("Hash Join", "Merge Join") and how in ("Anti", "Right Anti") for kind, how in nodes
    ), explained


async def test_a_transaction_counted_under_another_day_is_not_recorded_twice(
    db: asyncpg.Connection,
) -> None:
    # The stream counted one transaction under the next day (its event and its source row
    # disagree on the time): backfill's same-day anti-join misses that ledger row, its plain
    # insert meets the unique key, and the day is recorded with ON CONFLICT instead.
    start = datetime(2025, 3, 3, tzinfo=UTC)
    events = make_events(40, seed=81, start=start + timedelta(hours=20), span=timedelta(hours=12))
    await insert_source(db, events)
    moved = events[0]
    await db.execute(
        "INSERT INTO ingested_transactions (txn_id, event_id, occurred_at, source)"
        " VALUES ($1, 'E-moved', $2, 'stream')",
        moved.txn_id,
        moved.occurred_at + timedelta(days=1),
    )
    assert await backfill.backfill(db, [start.date()], 0, show=False) == len(events)
    rows = await db.fetch("SELECT txn_id, source FROM ingested_transactions ORDER BY txn_id")
    assert sorted(e.txn_id for e in events) == [r["txn_id"] for r in rows]
    assert {r["txn_id"] for r in rows if r["source"] == "stream"} == {moved.txn_id}
    assert await counted(db) == len(events)  # from the source rows, each once


async def test_backfill_then_late_stream_duplicates_are_not_counted(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    events = make_events(500, seed=61, span=timedelta(days=2))
    await insert_source(db, events)
    await backfill.backfill(db, _days(events), 48, show=False)
    assert await counted(db) == len(events)
    before = await _snapshot(db)
    sources = await db.fetchval("SELECT array_agg(DISTINCT source) FROM ingested_transactions")
    assert sources == ["backfill"]

    # The stream now delivers all of them (late), plus a few new transactions of today: the
    # consumer then writes today's live counters of the merchants they touch, read back from
    # PostgreSQL, backfilled rows included (new ones of yesterday would write none).
    extra = make_events(30, seed=62, prefix="NEW", span=today_span())
    await insert_source(db, extra)
    values = [encode_event(e) for e in events] + [encode_event(e) for e in extra]
    await publish(stack.bootstrap, stack.topic, values)
    async with running_consumer():
        await wait_until(lambda: _at(db, len(events) + len(extra)))
        await wait_until(lambda: _consumed(db, len(values)))
    assert await counted(db) == len(events) + len(extra)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)
    assert before != await _snapshot(db)  # the new ones did land


async def _consumed(db: asyncpg.Connection, n: int) -> bool:
    total = await db.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")
    return bool(total == n)


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_backfill_while_the_consumer_runs(
    stack: Stack, db: asyncpg.Connection, database_url: str
) -> None:
    events = make_events(1200, seed=71, span=timedelta(hours=30))
    await insert_source(db, events)
    values = with_duplicates(events, 0.1, seed=72)
    settings = DatabaseSettings(database_url=database_url)
    async with running_consumer(ingest_batch_max_records=50), create_pool(settings) as pool:
        publishing = asyncio.create_task(publish(stack.bootstrap, stack.topic, values))
        for _ in range(3):  # two days at once, while the stream writes the same days
            await backfill.backfill(pool, _days(events), 48, show=False, jobs=2)
            await asyncio.sleep(0.2)
        await publishing
        await wait_until(lambda: _consumed(db, len(values)), 40)
    assert await counted(db) == len(events)
    await assert_totals_match_source(db)


def test_bad_dates_are_config_errors() -> None:
    for first, last in [("2025-13-01", "2025-12-31"), ("01/02/2025", "2025-01-03"), ("", "x")]:
        with pytest.raises(ConfigError):
            backfill.day_range(first, last)
    with pytest.raises(ConfigError, match="before"):
        backfill.day_range("2025-02-01", "2025-01-01")
    assert backfill.day_range("2024-02-28", "2024-03-01") == [
        date(2024, 2, 28),
        date(2024, 2, 29),
        date(2024, 3, 1),
    ]


async def test_cli_prints_progress_and_a_summary(db: asyncpg.Connection, database_url: str) -> None:
    events = make_events(
        50, seed=81, start=datetime(2025, 7, 3, tzinfo=UTC), span=timedelta(days=2)
    )
    await insert_source(db, events)
    env = os.environ | {"DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        CLI, "backfill", "--from", "2025-07-01", "--to", "2025-07-03", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "backfilled 3 day(s) 2025-07-01..2025-07-03: 50 transactions" in out.decode()
    assert "3/3" in err.decode() and "#" in err.decode()
    assert await counted(db) == 50

    proc = await asyncio.create_subprocess_exec(
        CLI, "backfill", "--from", "2025-07-01", "--to", "July 3rd", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == (
        "molam-analytics backfill: error: --to 'July 3rd': expected a date as YYYY-MM-DD"
    )


async def test_backfilling_today_hands_live_counters_back_to_postgres(
    stack: Stack, db: asyncpg.Connection, redis: Redis, database_url: str, redis_url: str
) -> None:
    events = make_events(200, seed=111, span=today_span())
    await insert_source(db, events[:150])
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[:150]])
    async with running_consumer():
        await wait_until(lambda: _at(db, 150))
    await assert_live_matches_db(db, redis)
    # The wallet system now has rows the stream never carried: backfill counts them, and
    # today's hashes (now behind PostgreSQL) are cleared so the API reads PostgreSQL.
    await insert_source(db, events[150:])
    today = datetime.now(UTC).date().isoformat()
    env = os.environ | {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    proc = await asyncio.create_subprocess_exec(
        CLI, "backfill", "--from", today, "--to", today, "--quiet", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "cleared" in out.decode()
    assert await counted(db) == 200
    day = datetime.now(UTC).date()
    assert [k for p in live_key_patterns(day) async for k in redis.scan_iter(match=p)] == []
    assert not await redis.exists(LIVE_EPOCH_KEY)  # a consumer rewrites every merchant's
    # The consumer's next batch writes them again, equal to PostgreSQL.
    late = make_events(5, seed=112, prefix="LATE", merchants=5, span=today_span())
    await insert_source(db, late)
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in late])
    async with running_consumer():
        await wait_until(lambda: _at(db, 205))
    assert await redis.exists(live_key(None, day))
    await assert_live_matches_db(db, redis)  # every merchant's, not only the 5 with events
