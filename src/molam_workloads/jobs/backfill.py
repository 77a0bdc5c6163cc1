"""``molam-analytics backfill --from YYYY-MM-DD --to YYYY-MM-DD``: rebuild aggregates from source.

Each UTC day is one transaction, set-based in the database: take the day's ingestion lock
exclusively (no stream batch can be half-way through that day; see ``core.db.INGEST_LOCK``),
record the day's ``wallet_transactions`` in the exactly-once ledger (so stream copies that
arrive later are skipped) and make the day's hourly rows equal to one ``SELECT … GROUP BY``
over them: new buckets are inserted, changed ones overwritten, vanished ones deleted, equal
ones left alone (a re-run writes almost nothing). The result depends only on
``wallet_transactions``: re-running gives the same rows. Days within the minute horizon get
their ``txn_minute_agg`` rows rebuilt too. ``--jobs`` days are rebuilt at once. When the range
includes today, today's live counters are cleared from Redis (the API then reads PostgreSQL
until the consumer's next batch writes them again).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg
from pydantic import Field
from redis.asyncio import Redis

from molam_workloads.core.cache import LIVE_EPOCH_KEY, create_redis, live_key_patterns
from molam_workloads.core.db import INGEST_LOCK, create_pool
from molam_workloads.core.errors import ConfigError, ServiceUnavailable
from molam_workloads.core.measures import KEYS, MEASURES, grouped_select
from molam_workloads.core.settings import DatabaseSettings, RedisSettings, load_settings
from molam_workloads.jobs.progress import ProgressBar

MAX_DAYS = 3660
WORK_MEM = "64MB"


class BackfillSettings(DatabaseSettings, RedisSettings):
    # Same variable as the consumer's and the alerts housekeeping's: minute buckets exist only
    # for this recent past.
    minute_agg_retention_hours: int = Field(default=48, ge=0)


def _select(unit: str, time_column: str) -> str:
    return grouped_select(
        unit, time_column, "wallet_transactions", "occurred_at >= $1 AND occurred_at < $2"
    )


def _sync_sql(table: str, unit: str, time_column: str) -> str:
    """Make ``table``'s rows in [$1, $2) equal to the source's aggregate, writing only changes.

    Returns (transactions aggregated, rows inserted or changed, rows deleted).
    """
    keys = (time_column, *KEYS)
    cols = ", ".join((*keys, *MEASURES))
    assign = ", ".join(f"{m} = EXCLUDED.{m}" for m in MEASURES)
    old = ", ".join(f"{table}.{m}" for m in MEASURES)
    new = ", ".join(f"EXCLUDED.{m}" for m in MEASURES)
    # Equality where columns are NOT NULL keeps this a hash anti-join; only merchant_id may
    # be NULL (wallet-to-wallet transfers).
    same_key = " AND ".join(
        f"f.{k} IS NOT DISTINCT FROM t.{k}" if k == "merchant_id" else f"f.{k} = t.{k}"
        for k in keys
    )
    return f"""
WITH fresh AS MATERIALIZED (
    {_select(unit, time_column)}),
written AS (
    INSERT INTO {table} ({cols})
    SELECT {cols} FROM fresh
    ON CONFLICT ({", ".join(keys)}) DO UPDATE SET {assign}, updated_at = now()
    WHERE ({old}) IS DISTINCT FROM ({new})
    RETURNING 1),
removed AS (
    DELETE FROM {table} t
    WHERE t.{time_column} >= $1 AND t.{time_column} < $2
      AND NOT EXISTS (SELECT 1 FROM fresh f WHERE {same_key})
    RETURNING 1)
SELECT (SELECT coalesce(sum(tx_count), 0) FROM fresh)::bigint AS transactions,
       (SELECT count(*) FROM written) AS written,
       (SELECT count(*) FROM removed) AS removed
"""


HOURLY_SQL = _sync_sql("txn_hourly_agg", "hour", "hour")
MINUTE_SQL = _sync_sql("txn_minute_agg", "minute", "minute")
# The day's transactions not yet in the ledger. The usual case, a plain INSERT after a hash
# anti-join against the ledger rows of the same day (their BRIN index on occurred_at), cheaper
# than ON CONFLICT (docs/decisions/011-backfill-anti-join.md). While the day's lock is held
# only a transaction counted under another day's time (its event and its source row disagree
# on the day) can collide; then the savepoint falls back to ON CONFLICT.
_LEDGER_INSERT = """
INSERT INTO ingested_transactions (txn_id, event_id, occurred_at, source)
SELECT id, NULL, occurred_at, 'backfill'
FROM wallet_transactions w
WHERE occurred_at >= $1 AND occurred_at < $2
"""
LEDGER_SQL = (
    _LEDGER_INSERT
    + """  AND NOT EXISTS (SELECT 1 FROM ingested_transactions l
                  WHERE l.txn_id = w.id AND l.occurred_at >= $1 AND l.occurred_at < $2)
"""
)
LEDGER_ANY_DAY_SQL = _LEDGER_INSERT + "ON CONFLICT (txn_id) DO NOTHING\n"


# For the day's transaction. A day's GROUP BY fits in memory with a little more than the
# default 4 MB (no spill to disk), and JIT compiling these short statements costs more than it
# saves. No nested loops: statistics taken while the ledger's day was empty make one look
# cheap, and a nested anti-join against the rows inserted since is quadratic (the bench timed
# out).
DAY_SETTINGS = (
    f"SET LOCAL work_mem = '{WORK_MEM}'; SET LOCAL jit = off; SET LOCAL enable_nestloop = off"
)


def parse_day(value: str, flag: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value or ""):
        raise ConfigError(f"{flag} {value!r}: expected a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: {exc}") from None


def day_range(first: str, last: str) -> list[date]:
    start, end = parse_day(first, "--from"), parse_day(last, "--to")
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise ConfigError(f"{days} days is more than {MAX_DAYS}: split the range")
    return [start + timedelta(days=i) for i in range(days)]


async def backfill_day(
    conn: asyncpg.Connection, day: date, minute_horizon: timedelta | None, now: datetime
) -> int:
    """Rebuild one UTC day; returns how many transactions it holds."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    async with conn.transaction():
        await conn.execute(DAY_SETTINGS)
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1), $2)", INGEST_LOCK, day.toordinal()
        )
        try:
            async with conn.transaction():
                await conn.execute(LEDGER_SQL, start, end)
        except asyncpg.UniqueViolationError:
            await conn.execute(LEDGER_ANY_DAY_SQL, start, end)
        count = int(await conn.fetchval(HOURLY_SQL, start, end))
        if minute_horizon is not None and end > now - minute_horizon:
            lo = max(start, now - minute_horizon).replace(second=0, microsecond=0)
            await conn.fetchrow(MINUTE_SQL, lo, end)
    return count


async def backfill(
    pool: asyncpg.Pool | asyncpg.Connection,
    days: list[date],
    minute_horizon_hours: int,
    show: bool = True,
    jobs: int = 1,
) -> int:
    """Rebuild ``days``, ``jobs`` at a time (each on its own connection when given a pool)."""
    first = datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC)
    last = datetime(days[-1].year, days[-1].month, days[-1].day, tzinfo=UTC)
    # Up front, not per day: the function serialises its callers until they commit.
    await pool.execute("SELECT ensure_txn_hourly_partitions($1, $2)", first, last)
    horizon = timedelta(hours=minute_horizon_hours) if minute_horizon_hours else None
    bar = ProgressBar(len(days), "backfill") if show else None
    queue: asyncio.Queue[date] = asyncio.Queue()
    for day in days:
        queue.put_nowait(day)
    total = 0

    async def worker(conn: asyncpg.Connection) -> None:
        nonlocal total
        while not queue.empty():
            day = queue.get_nowait()
            n = await backfill_day(conn, day, horizon, datetime.now(UTC))
            total += n
            if bar:
                bar.advance(f"{day} {n} txns")

    if isinstance(pool, asyncpg.Connection):
        await worker(pool)
        return total

    async def on_own_connection() -> None:
        async with pool.acquire() as conn:
            await worker(conn)  # type: ignore[arg-type]

    await asyncio.gather(*(on_own_connection() for _ in range(max(1, min(jobs, len(days))))))
    return total


async def forget_live_counters(redis: Redis, day: date) -> int:
    """Delete ``day``'s live-counter hashes (every merchant and the platform).

    Backfill may change today's totals behind the consumer's back; without its hash the API
    reads PostgreSQL. The consumer's mark of a complete Redis goes too, so a running consumer
    rewrites every merchant's hash within seconds, new events or not (as after a FLUSHDB).
    """
    keys = [
        key
        for pattern in live_key_patterns(day)
        async for key in redis.scan_iter(match=pattern, count=1000)
    ]
    if keys:
        await redis.delete(*keys)
    await redis.delete(LIVE_EPOCH_KEY)
    return len(keys)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD")
    parser.add_argument(
        "--jobs", type=int, default=2, help="days rebuilt at once (connections; default 2)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


async def run(args: argparse.Namespace) -> int:
    days = day_range(args.first, args.last)
    if not 1 <= args.jobs <= 32:
        raise ConfigError("--jobs must be between 1 and 32")
    settings = load_settings(BackfillSettings)
    started = time.perf_counter()
    async with create_pool(settings, min_size=1, max_size=args.jobs) as pool:
        total = await backfill(
            pool, days, settings.minute_agg_retention_hours, not args.quiet, args.jobs
        )
    seconds = time.perf_counter() - started
    print(
        f"backfilled {len(days)} day(s) {days[0]}..{days[-1]}: {total} transactions"
        f" in {seconds:.1f}s ({total / max(seconds, 1e-9):.0f} rows/s)"
    )
    today = datetime.now(UTC).date()
    if today in days:
        try:
            async with create_redis(settings) as redis:
                n = await forget_live_counters(redis, today)
            print(f"cleared {n} live counter hash(es) of {today} (the consumer rewrites them)")
        except ServiceUnavailable as exc:
            print(f"warning: today's live counters may be stale: {exc}", file=sys.stderr)
    return 0
