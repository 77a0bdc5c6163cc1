"""refresh-views, and the runbook's "Incorrect Aggregate Values" check on the daily view."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from helpers.ingest import (
    Stack,
    insert_source,
    make_events,
    publish,
    running_consumer,
    wait_until,
    with_duplicates,
)

from molam_workloads.jobs.refresh_views import refresh

# The runbook's two queries, verbatim apart from the date.
RUNBOOK_SOURCE = """
SELECT DATE(occurred_at) as day, COUNT(*), SUM(amount)
FROM wallet_transactions
WHERE occurred_at >= '2000-01-01'
GROUP BY day
ORDER BY day;
"""
RUNBOOK_VIEW = """
SELECT day, SUM(tx_count), SUM(gross_volume_local)
FROM mv_txn_daily_agg
WHERE day >= '2000-01-01'
GROUP BY day
ORDER BY day;
"""


async def assert_runbook_reconciles(db: asyncpg.Connection) -> None:
    source = [tuple(r) for r in await db.fetch(RUNBOOK_SOURCE)]
    view = [tuple(r) for r in await db.fetch(RUNBOOK_VIEW)]
    assert source and view == source


@pytest.mark.parametrize("stack", [3], indirect=True)
async def test_runbook_reconciliation_after_ingesting_duplicates(
    stack: Stack, db: asyncpg.Connection
) -> None:
    events = make_events(900, seed=91, span=timedelta(days=4))
    await insert_source(db, events)
    await publish(stack.bootstrap, stack.topic, with_duplicates(events, 0.25, seed=92))
    async with running_consumer():
        await wait_until(lambda: _ledger_at(db, len(events)))
    # The runbook's psql session: DATE() is taken in the database's time zone (UTC).
    assert await db.fetchval("SHOW timezone") in ("UTC", "Etc/UTC")
    await refresh(db)
    await assert_runbook_reconciles(db)


async def _ledger_at(db: asyncpg.Connection, n: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM ingested_transactions")) >= n


async def test_first_refresh_is_plain_then_concurrent(db: asyncpg.Connection) -> None:
    await db.execute("REFRESH MATERIALIZED VIEW mv_txn_daily_agg WITH NO DATA")
    _, concurrently = await refresh(db)
    assert not concurrently
    seconds, concurrently = await refresh(db)
    assert concurrently and seconds >= 0
    row = await db.fetchrow(
        "SELECT refreshed_at, duration_ms FROM analytics_view_refreshes"
        " WHERE view_name = 'mv_txn_daily_agg'"
    )
    assert row is not None and row["duration_ms"] is not None
    assert await db.fetchval("SELECT relispopulated FROM pg_class WHERE relname = $1",
                             "mv_txn_daily_agg")  # fmt: skip


async def test_refresh_rebuilds_the_merchant_totals_in_its_transaction(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The view, its recorded refresh and the merchant totals of top merchants (migration 040)
    change in one transaction: a reader sees either none or all three (never a view newer than
    the totals, which would rank from other figures than the view it sums)."""
    await db.execute(
        "INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count,"
        " payment_volume_local) VALUES (now() - interval '3 days', 'M-1', 'SN', 'XOF',"
        " 'mobile_money', 4, 250)"
    )
    reader = await asyncpg.connect(database_url)
    try:
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            before = await reader.fetchval("SELECT count(*) FROM mv_txn_daily_agg")
            await refresh(db)  # commits meanwhile: invisible to the reader's snapshot
            assert await reader.fetchval("SELECT count(*) FROM mv_txn_daily_agg") == before
            assert await reader.fetchval("SELECT count(*) FROM analytics_merchant_totals") == 0
    finally:
        await reader.close()
    row = await db.fetchrow(
        "SELECT v.refreshed_at = s.source_refreshed_at AS current,"
        " (SELECT max(tx_count) FROM analytics_merchant_totals WHERE merchant_id = 'M-1') AS tx"
        " FROM analytics_view_refreshes v, analytics_rollup_state s"
        " WHERE v.view_name = 'mv_txn_daily_agg' AND s.name = 'merchant_totals'"
    )
    assert row is not None and row["current"] and row["tx"] == 4


async def test_a_failed_rebuild_of_the_totals_keeps_the_refresh(db: asyncpg.Connection) -> None:
    """The totals' rebuild fails: the view's refresh is committed all the same, the totals are
    left behind it (the API ranks from the view until it rebuilds them)."""
    await db.execute(
        "CREATE OR REPLACE FUNCTION analytics_rebuild_merchant_totals() RETURNS bigint"
        " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'broken'; END $$"
    )
    await refresh(db)
    row = await db.fetchrow(
        "SELECT (SELECT refreshed_at FROM analytics_view_refreshes"
        "        WHERE view_name = 'mv_txn_daily_agg') AS view,"
        " (SELECT source_refreshed_at FROM analytics_rollup_state"
        "  WHERE name = 'merchant_totals') AS totals"
    )
    assert row is not None and row["view"] is not None and row["totals"] is None
