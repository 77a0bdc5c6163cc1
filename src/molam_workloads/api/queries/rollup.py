"""``analytics_daily_rollup``: ``mv_txn_daily_agg`` summed over merchants (migration 020).

``DailySources`` says, in one query, when the daily view was last refreshed and which refresh
the rollup was built from. ``RollupRefresher`` rebuilds the rollup in the background when it is
behind: one REPEATABLE READ transaction reads the view's refresh stamp and the view itself from
the same snapshot, so the stamp it records never claims more than the rollup holds. An
advisory lock keeps API replicas from rebuilding at the same time.

The same refresher rebuilds ``analytics_merchant_totals`` (migration 040: running totals per
merchant for the ranking of top merchants) when it is behind the view, which happens after a
refresh that ``molam-analytics refresh-views`` did not make (it rebuilds them in the refresh's
own transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from molam_workloads.api.queries import Conn

log = logging.getLogger(__name__)
NAME = "daily"
TABLE = "analytics_daily_rollup"
_LOCK = "molam.api.daily_rollup"
# Running totals per merchant (migration 040), built by analytics_rebuild_merchant_totals().
TOTALS_NAME = "merchant_totals"
TOTALS_TABLE = "analytics_merchant_totals"
_TOTALS_LOCK = "molam.merchant_totals"  # the function's own lock

_SOURCES = """
SELECT (SELECT refreshed_at FROM analytics_view_refreshes WHERE view_name = 'mv_txn_daily_agg')
           AS view_refreshed_at,
       (SELECT source_refreshed_at FROM analytics_rollup_state WHERE name = $1)
           AS rollup_source,
       (SELECT source_refreshed_at FROM analytics_rollup_state WHERE name = $2)
           AS totals_source
"""

_REBUILD = f"""
INSERT INTO {TABLE} (day, country, currency, channel, tx_count, succeeded_count, failed_count,
    pending_count, payment_count, payment_volume_local, refund_count, refund_volume_local,
    fee_local)
SELECT day, country, currency, channel, sum(tx_count), sum(succeeded_count), sum(failed_count),
       sum(pending_count), sum(payment_count), sum(payment_volume_local), sum(refund_count),
       sum(refund_volume_local), sum(fee_local)
FROM mv_txn_daily_agg
GROUP BY day, country, currency, channel
"""


@dataclass(frozen=True)
class DailySources:
    view_refreshed_at: datetime | None
    rollup_source: datetime | None
    totals_source: datetime | None = None

    @property
    def rollup_current(self) -> bool:
        return self.view_refreshed_at is not None and self.rollup_source == self.view_refreshed_at

    @property
    def rollup_behind(self) -> bool:
        return self.view_refreshed_at is not None and not self.rollup_current

    @property
    def totals_current(self) -> bool:
        """``analytics_merchant_totals`` holds the view's current refresh (when both were read
        in one snapshot, the totals and the view agree)."""
        return self.view_refreshed_at is not None and self.totals_source == self.view_refreshed_at

    @property
    def totals_behind(self) -> bool:
        return self.view_refreshed_at is not None and not self.totals_current


async def daily_sources(conn: Conn) -> DailySources:
    row = await conn.fetchrow(_SOURCES, NAME, TOTALS_NAME)
    assert row is not None
    return DailySources(row["view_refreshed_at"], row["rollup_source"], row["totals_source"])


async def rebuild(conn: Conn) -> bool:
    """Rebuild the rollup, then the merchant totals, each if it is behind the view; False if
    there was nothing to do (or another process is doing it)."""
    rolled = await _rebuild_rollup(conn)
    totals = await _rebuild_totals(conn)
    return rolled or totals


async def _rebuild_totals(conn: Conn) -> bool:
    started = time.perf_counter()
    try:
        # The function records the view's refresh stamp read in this transaction's snapshot,
        # the one it builds from. Its lock (taken here without waiting) keeps builders apart.
        async with conn.transaction(isolation="repeatable_read"):
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", _TOTALS_LOCK
            ):
                return False
            if not (await daily_sources(conn)).totals_behind:
                return False
            await conn.execute("SELECT analytics_rebuild_merchant_totals()")
    except (asyncpg.SerializationError, asyncpg.UniqueViolationError):
        return False  # refresh-views or another replica rebuilt it meanwhile
    log.info("rebuilt %s in %.0f ms", TOTALS_TABLE, (time.perf_counter() - started) * 1000)
    return True


async def _rebuild_rollup(conn: Conn) -> bool:
    started = time.perf_counter()
    try:
        async with conn.transaction(isolation="repeatable_read"):
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", _LOCK):
                return False
            sources = await daily_sources(conn)
            if not sources.rollup_behind:
                return False
            await conn.execute(f"DELETE FROM {TABLE}")
            await conn.execute(_REBUILD)
            await conn.execute(
                "INSERT INTO analytics_rollup_state (name, source_refreshed_at, built_at, "
                "duration_ms) VALUES ($1, $2, now(), $3) ON CONFLICT (name) DO UPDATE SET "
                "source_refreshed_at = excluded.source_refreshed_at, "
                "built_at = excluded.built_at, duration_ms = excluded.duration_ms",
                NAME,
                sources.view_refreshed_at,
                round((time.perf_counter() - started) * 1000),
            )
    except asyncpg.SerializationError:
        return False  # another replica rebuilt it meanwhile
    log.info("rebuilt %s in %.0f ms", TABLE, (time.perf_counter() - started) * 1000)
    return True


class RollupRefresher:
    """At most one background rebuild per process; owned (cancelled, awaited) by the lifespan."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.task: asyncio.Task[None] | None = None

    def request(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="daily-rollup-rebuild")

    async def _run(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                await rebuild(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not rebuild %s: %r", TABLE, exc)

    async def wait(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
