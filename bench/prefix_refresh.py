"""Benchmark: the refresh of the running totals (migration 110), full and incremental.

Builds a throw-away database with ``bench/api.py``'s data (``--size``: ``1m`` by default, ``10m``
for decision 027's figures), marks its hourly rows as written two days ago (so that only the
changes made here count as new), then times ``analytics_rebuild_prefix_totals`` in a transaction
of its own each:

- a full build (the cutoff two days before the data's end, earlier than the one held);
- refreshes with nothing changed, with the cutoff 1 hour and 1 day later, after a late row
  300 days back (a shorter history: its middle) and after a late row the day before;
- then checks the daily and merchant-folded totals against 070's full build of the same rows,
  in a transaction rolled back.

Prints each refresh's time, its ratio to the full build's and the rows it rewrote. The
database is dropped afterwards.
Usage: ``python bench/prefix_refresh.py [--size 10m]`` with the local stack's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import scratch_database, table
from api import SIZES, build_dataset

REBUILD = "SELECT analytics_rebuild_prefix_totals('USD', cutoff => $1)"
WRITTEN = "SELECT hourly_rows, daily_rows, intraday_rows FROM analytics_prefix_state"
LATE = (
    "UPDATE txn_hourly_agg SET tx_count = tx_count + 1, succeeded_count = succeeded_count + 1, "
    "payment_volume_local = payment_volume_local + 12.5, updated_at = now() "
    "WHERE hour = $1 AND merchant_id = 'M-0007'"
)


async def refresh(conn: asyncpg.Connection, label: str, cutoff: datetime) -> list[str]:
    t0 = time.perf_counter()
    async with conn.transaction():
        await conn.fetchval(REBUILD, cutoff)
    seconds = time.perf_counter() - t0
    written = await conn.fetchrow(WRITTEN)
    assert written is not None
    row = [label, f"{seconds:.1f}", *(f"{v:,}" for v in written)]
    print("  ".join(row), flush=True)
    return row


async def same_as_full_build(conn: asyncpg.Connection, cutoff: datetime) -> bool:
    """The daily and folded totals equal what 070's full build gives (rolled back)."""
    tr = conn.transaction()
    await tr.start()
    try:
        for t in ("analytics_prefix_hourly", "analytics_prefix_daily"):
            await conn.execute(f"CREATE TEMPORARY TABLE held_{t} AS SELECT * FROM {t}")
        await conn.fetchval(
            "SELECT analytics_rebuild_prefix_totals_070('USD', cutoff => $1)", cutoff
        )
        for t in ("analytics_prefix_hourly", "analytics_prefix_daily"):
            differing = await conn.fetchval(
                f"SELECT count(*) FROM ((TABLE held_{t} EXCEPT ALL TABLE {t}) "
                f"UNION ALL (TABLE {t} EXCEPT ALL TABLE held_{t})) x"
            )
            if differing:
                print(f"{t}: {differing} rows differ from a full build")
                return False
        return True
    finally:
        await tr.rollback()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1m")
    parser.add_argument("--db-prefix", default="bench_prefix", help="of the database's name")
    args = parser.parse_args()
    merchants, days = SIZES[args.size]
    async with scratch_database(args.db_prefix) as dsn:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        await build_dataset(dsn, merchants, days, end)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "UPDATE txn_hourly_agg SET updated_at = updated_at - interval '2 days'"
            )
            await conn.execute("VACUUM ANALYZE txn_hourly_agg")
            cutoff = end - timedelta(days=2)
            rows = [await refresh(conn, "full build", cutoff)]
            for t in ("hourly", "daily", "intraday"):
                await conn.execute(f"VACUUM ANALYZE analytics_prefix_{t}")
            t0 = time.perf_counter()
            await conn.fetchval(
                "SELECT count(*) FROM analytics_prefix_changed_days($1, now())", cutoff
            )
            print(f"the day scan alone: {time.perf_counter() - t0:.1f} s")
            rows.append(await refresh(conn, "nothing changed", cutoff))
            cutoff += timedelta(hours=1)
            rows.append(await refresh(conn, "the cutoff 1 hour later", cutoff))
            cutoff += timedelta(days=1)
            rows.append(await refresh(conn, "the cutoff 1 day later", cutoff))
            rows.append(await refresh(conn, "nothing changed", cutoff))
            back = min(300, days // 2)
            await conn.execute(LATE, (cutoff - timedelta(days=back)).replace(hour=13))
            rows.append(await refresh(conn, f"a late row {back} days back", cutoff))
            await conn.execute(  # written long before, for the next refresh
                "UPDATE txn_hourly_agg SET updated_at = updated_at - interval '2 hours' "
                "WHERE updated_at > now() - interval '1 hour'"
            )
            await conn.execute(LATE, (cutoff - timedelta(days=1)).replace(hour=13))
            rows.append(await refresh(conn, "a late row the day before", cutoff))
            same = await same_as_full_build(conn, cutoff)
        finally:
            await conn.close()
    full = float(rows[0][1])  # the baseline: the full build, in the same run
    for r in rows:
        r.insert(2, f"{float(r[1]) / full:.3f}x")
    print()
    headers = ["refresh", "s", "vs full build", "hourly rows", "daily rows", "within-day rows"]
    print(table(headers, rows))
    print(f"\nthe daily and folded totals equal a full build's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
