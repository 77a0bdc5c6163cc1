"""refresh-views also rebuilds the running totals (migration 070), then the kept merchant
rankings (migration 140), each in its own savepoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from molam_workloads.jobs.refresh_views import refresh


async def test_refresh_rebuilds_the_running_totals(db: asyncpg.Connection) -> None:
    """The totals hold the hours that ended an hour before the refresh began; later hours are
    left to the hourly rows (the freshness bound of late events)."""
    now = datetime.now(UTC)
    await db.execute("SELECT ensure_txn_hourly_partitions($1, $2)", now - timedelta(days=4), now)
    for hours_ago, n in ((50, 4), (0, 3)):
        await db.execute(
            "INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count,"
            " payment_volume_local) VALUES (date_trunc('hour', now()) - $1 * interval '1 hour',"
            " 'M-1', 'SN', 'XOF', 'mobile_money', $2, 250)",
            hours_ago,
            n,
        )
    await refresh(db)  # without a reporting currency: the view and merchant totals only
    assert await db.fetchval("SELECT count(*) FROM analytics_prefix_state") == 0

    await refresh(db, reporting_currency="USD")
    state = await db.fetchrow("SELECT quote, cutoff, built_at FROM analytics_prefix_state")
    assert state is not None and state["quote"] == "USD"
    assert state["cutoff"] == (state["built_at"] - timedelta(hours=1)).replace(
        minute=0, second=0, microsecond=0
    )
    # the platform's running total at its last hour holds the older row only
    last = await db.fetchval(
        "SELECT sum(tx_count) FROM analytics_prefix_hourly"
        " WHERE hour = (SELECT max(hour) FROM analytics_prefix_hourly)"
    )
    assert last == 4
    assert await db.fetchval("SELECT max(tx_count) FROM analytics_prefix_daily") == 4
    # the rankings of the days held, built from these totals: M-1 first in its 1-day block
    built_from = await db.fetchval("SELECT built_from FROM analytics_prefix_ranks_state")
    assert built_from == state["built_at"]
    day = (now - timedelta(hours=50)).date()
    block = await db.fetchrow(
        "SELECT merchants, amounts FROM analytics_prefix_ranks"
        " WHERE measure = 'tx_count' AND lo = $1 AND hi = $1 + 1",
        day,
    )
    assert block is not None and (block["merchants"], block["amounts"]) == (["M-1"], [4])


async def test_a_failed_rebuild_of_the_running_totals_keeps_the_refresh(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_totals(quote char(3),"
        " margin interval DEFAULT interval '1 hour', cutoff timestamptz DEFAULT NULL)"
        " RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'broken'; END $$"
    )
    await refresh(db, reporting_currency="USD")
    assert await db.fetchval(
        "SELECT refreshed_at FROM analytics_view_refreshes WHERE view_name = 'mv_txn_daily_agg'"
    )
    assert await db.fetchval("SELECT count(*) FROM analytics_prefix_state") == 0


async def test_a_failed_rebuild_of_the_rankings_keeps_the_running_totals(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "CREATE OR REPLACE FUNCTION analytics_rebuild_prefix_ranks(size integer, levels integer)"
        " RETURNS integer LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'broken'; END $$"
    )
    await refresh(db, reporting_currency="USD")
    assert await db.fetchval("SELECT count(*) FROM analytics_prefix_state") == 1
    assert await db.fetchval("SELECT count(*) FROM analytics_prefix_ranks_state") == 0
