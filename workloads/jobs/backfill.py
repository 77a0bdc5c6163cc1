"""``molam-analytics backfill --from YYYY-MM-DD --to YYYY-MM-DD``: rebuild aggregates from source.

Each UTC day is one transaction, set-based in the database: take the ingestion lock
exclusively (no stream batch can be half-way through the day), delete the day's hourly rows,
record the day's ``wallet_transactions`` in the exactly-once ledger (so stream copies that
arrive later are skipped) and rebuild the hourly rows with one ``INSERT … SELECT … GROUP BY``.
The result depends only on ``wallet_transactions``: re-running gives the same rows. Days within
the minute horizon get their ``txn_minute_agg`` rows rebuilt the same way.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg
from pydantic import Field

from molam_workloads.core.db import INGEST_LOCK, connect
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.settings import DatabaseSettings, load_settings
from molam_workloads.jobs.progress import ProgressBar

MAX_DAYS = 3660


class BackfillSettings(DatabaseSettings):
    # Same variable as the consumer's: minute buckets exist only for this recent past.
    minute_agg_horizon_hours: int = Field(default=48, ge=0)


def _measures() -> str:
    ok = "status = 'succeeded'"
    parts = [
        "count(*)",
        f"count(*) FILTER (WHERE {ok})",
        "count(*) FILTER (WHERE status = 'failed')",
        "count(*) FILTER (WHERE status = 'pending')",
        "sum(amount)",
    ]
    for kind in ("payment", "refund", "payout", "transfer"):
        cond = f"{ok} AND type = '{kind}'"
        parts += [
            f"count(*) FILTER (WHERE {cond})",
            f"coalesce(sum(amount) FILTER (WHERE {cond}), 0)",
        ]
    parts.append(f"coalesce(sum(fee) FILTER (WHERE {ok}), 0)")
    return ",\n       ".join(parts)


_COLUMNS = (
    "merchant_id, country, currency, channel, tx_count, succeeded_count, failed_count,"
    " pending_count, gross_volume_local, payment_count, payment_volume_local, refund_count,"
    " refund_volume_local, payout_count, payout_volume_local, transfer_count,"
    " transfer_volume_local, fee_local"
)


def _rebuild_sql(table: str, unit: str) -> str:
    time_column = "hour" if unit == "hour" else "minute"
    return f"""
WITH ins AS (
    INSERT INTO {table} ({time_column}, {_COLUMNS})
    SELECT date_trunc('{unit}', occurred_at, 'UTC'), merchant_id, country, currency, channel,
       {_measures()}
    FROM wallet_transactions
    WHERE occurred_at >= $1 AND occurred_at < $2
    GROUP BY 1, 2, 3, 4, 5
    RETURNING tx_count)
SELECT coalesce(sum(tx_count), 0)::bigint FROM ins
"""


HOURLY_SQL = _rebuild_sql("txn_hourly_agg", "hour")
MINUTE_SQL = _rebuild_sql("txn_minute_agg", "minute")
LEDGER_SQL = """
INSERT INTO ingested_transactions (txn_id, event_id, occurred_at, source)
SELECT id, NULL, occurred_at, 'backfill'
FROM wallet_transactions
WHERE occurred_at >= $1 AND occurred_at < $2
ON CONFLICT (txn_id) DO NOTHING
"""


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
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", INGEST_LOCK)
        await conn.execute("SELECT ensure_txn_hourly_partitions($1, $1)", start)
        await conn.execute("DELETE FROM txn_hourly_agg WHERE hour >= $1 AND hour < $2", start, end)
        await conn.execute(LEDGER_SQL, start, end)
        count = int(await conn.fetchval(HOURLY_SQL, start, end))
        if minute_horizon is not None and end > now - minute_horizon:
            lo = max(start, now - minute_horizon)
            lo = lo.replace(second=0, microsecond=0)
            await conn.execute(
                "DELETE FROM txn_minute_agg WHERE minute >= $1 AND minute < $2", lo, end
            )
            await conn.fetchval(MINUTE_SQL, lo, end)
    return count


async def backfill(
    conn: asyncpg.Connection, days: list[date], minute_horizon_hours: int, show: bool = True
) -> int:
    horizon = timedelta(hours=minute_horizon_hours) if minute_horizon_hours else None
    bar = ProgressBar(len(days), "backfill") if show else None
    total = 0
    for day in days:
        n = await backfill_day(conn, day, horizon, datetime.now(UTC))
        total += n
        if bar:
            bar.advance(f"{day} {n} txns")
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


async def run(args: argparse.Namespace) -> int:
    days = day_range(args.first, args.last)
    settings = load_settings(BackfillSettings)
    conn = await connect(settings.database_url)
    started = time.perf_counter()
    try:
        total = await backfill(conn, days, settings.minute_agg_horizon_hours, not args.quiet)
    finally:
        await conn.close()
    seconds = time.perf_counter() - started
    print(
        f"backfilled {len(days)} day(s) {days[0]}..{days[-1]}: {total} transactions"
        f" in {seconds:.1f}s ({total / max(seconds, 1e-9):.0f} rows/s)"
    )
    return 0
