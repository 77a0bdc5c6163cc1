"""bench/backfill: rows/s of ``molam-analytics backfill`` against a bare INSERT … SELECT … GROUP BY.

Fills ``wallet_transactions`` with ROWS synthetic transactions over DAYS days (set-based, in
the database), then times on the same rows:
1. baseline: one bare ``INSERT INTO txn_hourly_agg … SELECT … GROUP BY`` over the whole range
   (the same aggregate expressions, no chunking, no ledger);
2. backfill with ``--jobs 1`` and ``--jobs 2`` (the default), each a first run on empty
   aggregates and ledger, then a re-run: per day one transaction (the day's exclusive ingest
   lock, exactly-once ledger insert, aggregate sync). Every run must give the baseline's rows.
Each figure is the best of ROUNDS rounds.

Run: ``make bench`` or ``set -a; . .stack/env; set +a; .venv/bin/python
bench/backfill.py [ROWS [DAYS]]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_database, table

from molam_workloads.core.db import create_pool
from molam_workloads.core.measures import KEYS, MEASURES, grouped_select
from molam_workloads.core.settings import DatabaseSettings
from molam_workloads.jobs import backfill

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
DAYS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
ROUNDS = 2  # best of: the machine may be shared
END = datetime(2025, 7, 1, tzinfo=UTC)
START = END - timedelta(days=DAYS)

# The baseline: the same aggregate expressions as backfill's (core.measures), in one
# INSERT … SELECT … GROUP BY over [$1, $2), without chunking or ledger.
BARE_HOURLY_SQL = f"""
INSERT INTO txn_hourly_agg (hour, {", ".join(KEYS)}, {", ".join(MEASURES)})
{grouped_select("hour", "hour", "wallet_transactions", "occurred_at >= $1 AND occurred_at < $2")}
"""

# Merchants have Zipf-like sizes and sell in one market each (currency + country), as in
# ``simulate``; channels, types and statuses vary per transaction.
FILL = """
INSERT INTO wallet_transactions (id, merchant_id, occurred_at, amount, currency, country,
                                 channel, type, status, fee)
SELECT 'B-' || g,
       CASE WHEN g % 50 = 0 THEN NULL ELSE 'M-' || lpad(m::text, 4, '0') END,
       $1::timestamptz + (g::float8 / $3) * ($2::timestamptz - $1::timestamptz),
       round((1 + random() * 20000)::numeric, 2),
       (ARRAY['XOF', 'XOF', 'GHS', 'NGN', 'KES'])[1 + m % 5],
       (ARRAY['SN', 'CI', 'GH', 'NG', 'KE'])[1 + m % 5],
       (ARRAY['mobile_money', 'mobile_money', 'card', 'bank_transfer', 'wallet'])[1 + g % 5],
       (ARRAY['payment', 'payment', 'payment', 'payment', 'payment', 'payment', 'refund',
              'payout', 'transfer'])[1 + (g / 3) % 9],
       (ARRAY['succeeded', 'succeeded', 'succeeded', 'succeeded', 'succeeded', 'succeeded',
              'succeeded', 'succeeded', 'failed', 'pending'])[1 + (g / 11) % 10],
       round((random() * 50)::numeric, 2)
FROM generate_series(0, $3 - 1) AS g,
     LATERAL (SELECT floor(200 * random() ^ 3)::int + g * 0 AS m) AS merchant
"""

ROW = (
    "hour, merchant_id, country, currency, channel, tx_count, succeeded_count, failed_count,"
    " pending_count, gross_volume_local, payment_count, payment_volume_local, refund_count,"
    " refund_volume_local, payout_count, payout_volume_local, transfer_count,"
    " transfer_volume_local, fee_local"
)


async def snapshot(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await conn.fetch(f"SELECT {ROW} FROM txn_hourly_agg ORDER BY {ROW}")]


async def main() -> None:
    print(f"bench/backfill: {ROWS:,} wallet_transactions over {DAYS} days")
    async with scratch_database("bench_backfill") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT ensure_txn_hourly_partitions($1, $2)", START, END - timedelta(seconds=1)
            )
            t = time.perf_counter()
            await conn.execute(FILL, START, END, ROWS)
            await conn.execute("VACUUM ANALYZE wallet_transactions")
            print(f"filled in {time.perf_counter() - t:.1f}s")

            # Warm the cache the same way for every contender: one full read first.
            await conn.fetchval("SELECT count(*) FROM wallet_transactions")
            baseline_s = float("inf")
            for _ in range(ROUNDS):
                await conn.execute("TRUNCATE txn_hourly_agg")
                t = time.perf_counter()
                await conn.execute(BARE_HOURLY_SQL, START, END)
                baseline_s = min(baseline_s, time.perf_counter() - t)
            expected = await snapshot(conn)

            days = [(START + timedelta(days=i)).date() for i in range(DAYS)]
            timings: dict[str, float] = {}
            checks: dict[str, bool] = {}
            async with create_pool(DatabaseSettings(database_url=dsn), max_size=2) as pool:
                for jobs in (1, 2):
                    for _ in range(ROUNDS):
                        await conn.execute("TRUNCATE txn_hourly_agg, ingested_transactions")
                        await conn.execute("VACUUM ANALYZE txn_hourly_agg, ingested_transactions")
                        for run in ("first run", "re-run"):
                            name = f"backfill --jobs {jobs}, {run}"
                            t = time.perf_counter()
                            n = await backfill.backfill(pool, days, 0, show=False, jobs=jobs)
                            took = time.perf_counter() - t
                            timings[name] = min(timings.get(name, took), took)
                            ok = n == ROWS and await snapshot(conn) == expected
                            checks[name] = checks.get(name, True) and ok
            ledger = await conn.fetchval("SELECT count(*) FROM ingested_transactions")
        finally:
            await conn.close()

    rows = [["bare INSERT … SELECT … GROUP BY (baseline)", f"{ROWS:,}", f"{baseline_s:.2f}",
             f"{ROWS / baseline_s:,.0f}", "1.00x", "-"]]  # fmt: skip
    rows += [
        [name, f"{ROWS:,}", f"{s:.2f}", f"{ROWS / s:,.0f}", f"{s / baseline_s:.2f}x",
         "yes" if checks[name] else "NO"]
        for name, s in timings.items()
    ]  # fmt: skip
    print(table(["run", "rows", "seconds", "rows/s", "time vs baseline", "identical"], rows))
    print(f"ledger rows {ledger:,} (expected {ROWS:,})")
    default = max(timings["backfill --jobs 2, first run"], timings["backfill --jobs 2, re-run"])
    worst = default / baseline_s
    verdict = "met" if worst <= 1.5 else "MISSED"
    print(f"target (default --jobs 2): within 1.5x of the baseline ({verdict}: {worst:.2f}x)")
    if not (all(checks.values()) and ledger == ROWS):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
