"""``molam-analytics refresh-views``: refresh ``mv_txn_daily_agg`` and record when.

``CONCURRENTLY`` keeps the view readable by the API during the refresh (it needs the view's
unique index, and a view that has been populated once: the first refresh is a plain one).

One transaction refreshes the view, records the refresh and rebuilds the merchant totals of
top merchants from it (``analytics_rebuild_merchant_totals``, migration 040): a reader sees the
three at the same refresh, never a view newer than its recorded refresh or than the totals.
A failed rebuild of the totals is rolled back alone (a savepoint) and logged: the refresh is
committed, and the API, finding the totals behind, ranks from the view until it rebuilds them.

The same transaction rebuilds the running totals of every KPI sum
(``analytics_rebuild_prefix_totals``, migration 070) for the hours that ended an hour before it
started: the API answers any range from them plus the hourly rows of the hours after. That
bounds their freshness: an event more than an hour late is counted from the next refresh on
(the CronJob's schedule, ``views.refreshSchedule``, plus the refresh's own duration). Then the
kept merchant rankings of the days it rewrote (``core.ranks``, migration 140).
"""

from __future__ import annotations

import argparse
import logging
import time

import asyncpg

from molam_workloads.core import ranks
from molam_workloads.core.db import connect
from molam_workloads.core.settings import DatabaseSettings, ReportingSettings, load_settings

VIEW = "mv_txn_daily_agg"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # configuration comes from DATABASE_URL


async def refresh(
    conn: asyncpg.Connection, view: str = VIEW, reporting_currency: str | None = None
) -> tuple[float, bool]:
    """Refresh ``view`` (and, given the reporting currency, the running totals); returns
    (seconds taken, whether it ran concurrently)."""
    populated = await conn.fetchval(
        "SELECT relispopulated FROM pg_class WHERE oid = $1::regclass", view
    )
    started = time.perf_counter()
    mode = "CONCURRENTLY " if populated else ""
    async with conn.transaction():
        await conn.execute(f'REFRESH MATERIALIZED VIEW {mode}"{view}"')
        seconds = time.perf_counter() - started
        # now(): the transaction's start, no later than the data the refresh read
        await conn.execute(
            "INSERT INTO analytics_view_refreshes (view_name, refreshed_at, duration_ms)"
            " VALUES ($1, now(), $2) ON CONFLICT (view_name) DO UPDATE"
            " SET refreshed_at = EXCLUDED.refreshed_at, duration_ms = EXCLUDED.duration_ms",
            view,
            round(seconds * 1000),
        )
        if view == VIEW:
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute("SELECT analytics_rebuild_merchant_totals()")
            except asyncpg.PostgresError as exc:
                log.warning("could not rebuild the merchant totals: %r", exc)
            if reporting_currency is not None:
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "SELECT analytics_rebuild_prefix_totals($1)", reporting_currency
                        )
                except asyncpg.PostgresError as exc:
                    log.warning("could not rebuild the running totals: %r", exc)
                # Its own savepoint: blocks left behind the totals are not used by the API.
                try:
                    async with conn.transaction():
                        await ranks.rebuild(conn)
                except asyncpg.PostgresError as exc:
                    log.warning("could not rebuild the merchant rankings: %r", exc)
    return seconds, bool(populated)


async def run(args: argparse.Namespace) -> int:
    del args
    settings = load_settings(DatabaseSettings)
    reporting = load_settings(ReportingSettings)
    conn = await connect(settings.database_url)
    try:
        seconds, concurrently = await refresh(conn, reporting_currency=reporting.reporting_currency)
    finally:
        await conn.close()
    how = "concurrently" if concurrently else "first population"
    print(f"refreshed {VIEW} in {seconds * 1000:.0f} ms ({how})")
    return 0
