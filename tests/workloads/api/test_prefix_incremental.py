"""The incremental refresh of the running totals (migration 110) leaves exactly the tables a full
build of the same hourly rows leaves: row for row, every column as PostgreSQL prints it.

Each change is made as writers make it (``updated_at`` = now()), then the refresh runs; a full
build of the same data (forced by emptying ``analytics_prefix_intraday_days``, in a transaction
rolled back afterwards) is compared with what the refresh left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_prefix import CELLS, CUTOFF, DAYS, QUOTE, T0, H, setup

# Each table with its key: rows compared in that order.
TABLES = {
    "analytics_prefix_hourly": "hour, country, channel, currency",
    "analytics_prefix_daily": "day, merchant_id, country, channel, currency",
    "analytics_prefix_intraday": "hour, merchant_id, country, channel, currency",
    "analytics_prefix_intraday_days": "day",
}
D = timedelta(days=1)
NEW_CELL = ("M-9", "KE", "KES", "card")  # not in test_prefix's data; KES has no rate there


async def build(conn: asyncpg.Connection, cutoff: datetime) -> asyncpg.Record:
    await conn.execute("SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, cutoff)
    state = await conn.fetchrow("SELECT * FROM analytics_prefix_state")
    assert state is not None
    return state


async def tables(conn: asyncpg.Connection) -> dict[str, list[str]]:
    return {
        t: [r[0] for r in await conn.fetch(f"SELECT x::text FROM {t} x ORDER BY {key}")]
        for t, key in TABLES.items()
    }


async def assert_as_full_build(conn: asyncpg.Connection, cutoff: datetime) -> None:
    got = await tables(conn)
    tr = conn.transaction()  # a savepoint when the caller is in a transaction
    await tr.start()
    try:
        await conn.execute("DELETE FROM analytics_prefix_intraday_days")  # forces a full build
        await build(conn, cutoff)
        want = await tables(conn)
    finally:
        await tr.rollback()
    for t in TABLES:
        missing, extra = set(want[t]) - set(got[t]), set(got[t]) - set(want[t])
        assert got[t] == want[t], (t, sorted(missing)[:5], sorted(extra)[:5])


async def add(conn: asyncpg.Connection, at: datetime, cell: tuple[Any, ...], n: int) -> None:
    """A late event, as the consumer writes it: added to the hourly row, updated_at = now()."""
    merchant, country, currency, channel = cell
    await conn.execute(
        "INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count, "
        "succeeded_count, payment_count, payment_volume_local, fee_local) "
        "VALUES ($1, $2, $3, $4, $5, $6, $6, $6, $7, $8) "
        "ON CONFLICT (hour, merchant_id, country, currency, channel) DO UPDATE SET "
        "tx_count = txn_hourly_agg.tx_count + excluded.tx_count, "
        "succeeded_count = txn_hourly_agg.succeeded_count + excluded.succeeded_count, "
        "payment_count = txn_hourly_agg.payment_count + excluded.payment_count, "
        "payment_volume_local = txn_hourly_agg.payment_volume_local "
        "+ excluded.payment_volume_local, fee_local = txn_hourly_agg.fee_local "
        "+ excluded.fee_local, updated_at = now()",
        at,
        merchant,
        country,
        currency,
        channel,
        n,
        Decimal(n * 1234567) / 10_000,
        Decimal(n) / 1000,
    )


async def delete(conn: asyncpg.Connection, start: datetime, end: datetime, **key: Any) -> int:
    """Deletes the hourly rows in [start, end) matching ``key``, as a backfill does."""
    where = "".join(f" AND {k} = ${i}" for i, k in enumerate(key, start=3))
    status: str = await conn.execute(
        f"DELETE FROM txn_hourly_agg WHERE hour >= $1 AND hour < $2{where}",
        start,
        end,
        *key.values(),
    )
    return int(status.split()[-1])


async def prepare(dsn: str) -> None:
    """test_prefix's data and totals (cutoff CUTOFF), its rows written long before."""
    await setup(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE txn_hourly_agg SET updated_at = updated_at - interval '3 hours'")
        await build(conn, CUTOFF)  # so the rows above were written before this build began
    finally:
        await conn.close()


@pytest.fixture
def prepared(database_url: str) -> str:
    asyncio.run(prepare(database_url))
    return database_url


@pytest.fixture
async def db_built(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    await prepare(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def incremental(conn: asyncpg.Connection, cutoff: datetime, days: int | None) -> None:
    """The refresh, incremental (it rewrote part of the daily totals, ``days`` within-day days),
    then as a full build."""
    total = await conn.fetchval("SELECT count(*) FROM analytics_prefix_daily")
    state = await build(conn, cutoff)
    assert days is None or state["intraday_days"] == days
    assert state["daily_rows"] < total or total == 0
    await assert_as_full_build(conn, cutoff)
    # A day written within the hour before a build is rebuilt by the next ones too (writers
    # commit within the hour): age the rows, so that the next step's count is its own.
    await conn.execute("UPDATE txn_hourly_agg SET updated_at = updated_at - interval '3 hours'")


async def test_the_cutoff_moving_forward(db_built: asyncpg.Connection) -> None:
    db = db_built
    await incremental(db, CUTOFF, 0)  # nothing changed: nothing rewritten
    written = await db.fetchrow("SELECT hourly_rows, daily_rows FROM analytics_prefix_state")
    assert written is not None and tuple(written) == (0, 0)
    await incremental(db, CUTOFF + 3 * H, 1)  # within the cutoff's day
    await incremental(db, CUTOFF + 17 * H, 2)  # into the next day: its first hours too
    await incremental(db, CUTOFF + 2 * D + 17 * H, 2)  # the last data, past it
    await incremental(db, CUTOFF + 4 * D, 0)  # no hourly row left: zeros appended


async def test_late_event_and_deletions_in_old_days(db_built: asyncpg.Connection) -> None:
    db = db_built
    await add(db, T0 + 30 * H, ("M-1", "SN", "XOF", "card"), 3)
    await incremental(db, CUTOFF, 1)
    await add(db, T0 + 4 * D + 5 * H, ("M-2", "FR", "EUR", "card"), 2)
    await add(db, T0 + 2 * D + 5 * H, ("M-3", "US", "USD", "card"), 2)
    await incremental(db, CUTOFF + 2 * H, 3)  # two old days and the cutoff's
    assert await delete(db, T0 + 3 * D, T0 + 3 * D + 6 * H, merchant_id="M-3") > 0
    await incremental(db, CUTOFF + 2 * H, 1)
    # the first hours of a cell gone: its totals now start later
    first = await db.fetchval(
        "SELECT min(hour) FROM txn_hourly_agg WHERE currency = 'NGN' AND hour < $1", CUTOFF
    )
    assert await delete(db, first, first + 2 * D, currency="NGN") > 0
    await incremental(db, CUTOFF + 2 * H, None)


async def test_new_cells_and_a_day_without_rows(db_built: asyncpg.Connection) -> None:
    db = db_built
    await add(db, T0 + D + 7 * H, NEW_CELL, 4)  # first seen in an old day
    await incremental(db, CUTOFF, 1)
    other = ("M-8", "GH", "GHS", "mobile_money")
    await add(db, CUTOFF - 2 * H, other, 1)  # first seen in the cutoff's (partial) day
    await add(db, CUTOFF - 11 * H, other, 1)  # and the whole day before it
    await incremental(db, CUTOFF, 2)
    assert await delete(db, T0 + 2 * D, T0 + 3 * D) > 0  # a day loses all its rows
    await incremental(db, CUTOFF, 0)  # nothing to rebuild within it: it has no rows left
    days = await db.fetchval("SELECT count(*) FROM analytics_prefix_intraday_days")
    assert days == (CUTOFF - T0).days  # the cutoff's day, less the empty one
    assert await delete(db, T0, T0 + D) > 0  # the first day: every cell starts later
    await incremental(db, CUTOFF + 5 * H, 1)
    assert await delete(db, T0, CUTOFF, merchant_id="M-9") == 1  # a cell loses its only row
    await incremental(db, CUTOFF + 5 * H, 1)


async def test_new_rates_rebuild_everything(db_built: asyncpg.Connection) -> None:
    db = db_built
    await add(db, T0 + 30 * H, ("M-1", "SN", "XOF", "card"), 3)
    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ('2025-07-03', 'KES', 'USD', "
        "0.0077)"
    )
    state = await build(db, CUTOFF + H)
    assert state["intraday_days"] == (CUTOFF - T0).days + 1  # every day
    assert state["daily_rows"] == await db.fetchval("SELECT count(*) FROM analytics_prefix_daily")
    await assert_as_full_build(db, CUTOFF + H)


# One change between two refreshes: (kind, day of the data, hour, cell index, size).
CHANGES = st.tuples(
    st.sampled_from(["add", "add", "new cell", "delete row", "delete day", "cutoff"]),
    st.integers(min_value=0, max_value=DAYS - 1),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=len(CELLS)),  # CELLS[i], or a new cell
    st.integers(min_value=1, max_value=30),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(CHANGES, min_size=1, max_size=3), min_size=1, max_size=4))
def test_random_changes_as_a_full_build(
    prepared: str, steps: list[list[tuple[str, int, int, int, int]]]
) -> None:
    """Random changes then a refresh, a few times over: each time as a full build. In one
    transaction (rolled back), so every row written in it counts as written since the last
    build: the days of earlier steps are rebuilt again, which is still the incremental path."""

    async def body() -> None:
        conn = await asyncpg.connect(prepared)
        tr = conn.transaction()
        await tr.start()
        try:
            cutoff = CUTOFF
            for changes in steps:
                for kind, day, hour, cell, n in changes:
                    at = T0 + day * D + hour * H
                    if kind == "add":
                        await add(conn, at, CELLS[cell % len(CELLS)], n)
                    elif kind == "new cell":
                        await add(conn, at, ("M-7", "CM", "XAF", f"c{cell}"), n)
                    elif kind == "delete row":
                        country = CELLS[cell][1] if cell < len(CELLS) else "CM"
                        await delete(conn, at, at + n * H, country=country)
                    elif kind == "delete day":
                        await delete(conn, T0 + day * D, T0 + (day + 1) * D)
                    else:
                        cutoff = min(cutoff + n * H, T0 + (DAYS + 1) * D)
                await build(conn, cutoff)
                await assert_as_full_build(conn, cutoff)
        finally:
            await tr.rollback()
            await conn.close()

    asyncio.run(body())
