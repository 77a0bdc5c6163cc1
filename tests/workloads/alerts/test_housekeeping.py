"""Housekeeping: old resolved alerts and expired minute buckets are deleted, nothing else."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from molam_workloads.alerts.housekeeping import housekeep
from molam_workloads.alerts.settings import AlertsSettings

from .conftest import T0, add_minutes


async def _alert(db: asyncpg.Connection, state: str, resolved_days_ago: int | None) -> int:
    resolved = T0 - timedelta(days=resolved_days_ago) if resolved_days_ago is not None else None
    alert_id: int = await db.fetchval(
        "INSERT INTO analytics_alerts (rule_name, metric, severity, state, threshold, "
        "comparison, started_at, resolved_at) VALUES ('r', 'tx_count', 'info', $1, 0, 'gt', "
        "$2, $3) RETURNING id",
        state,
        T0 - timedelta(days=60),
        resolved,
    )
    await db.execute(
        "INSERT INTO analytics_alert_events (alert_id, event) VALUES ($1, 'fired')", alert_id
    )
    return alert_id


async def test_housekeeping(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    old = await _alert(db, "resolved", 31)
    recent = await _alert(db, "resolved", 29)
    open_ = await _alert(db, "firing", None)
    acked = await _alert(db, "acknowledged", None)
    await add_minutes(db, T0 - timedelta(hours=50), 180)  # 50h..47h ago: 120 min expire
    report = await housekeep(pool, settings, now=T0)
    assert (report.alerts_deleted, report.minute_rows_deleted) == (1, 120)
    left = {r["id"] for r in await db.fetch("SELECT id FROM analytics_alerts")}
    assert left == {recent, open_, acked} and old not in left
    assert (
        await db.fetchval("SELECT count(*) FROM analytics_alert_events WHERE alert_id = $1", old)
        == 0
    )
    assert await db.fetchval("SELECT min(minute) FROM txn_minute_agg") == T0 - timedelta(hours=48)
    again = await housekeep(pool, settings, now=T0)
    assert (again.alerts_deleted, again.minute_rows_deleted) == (0, 0)
