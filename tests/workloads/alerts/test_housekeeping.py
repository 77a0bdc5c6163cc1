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


async def test_ledger_rows_and_tests_are_kept_for_their_retention_only(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    alert = await _alert(db, "firing", None)
    for days in (8, 6):
        test_id = await db.fetchval(
            "INSERT INTO analytics_alert_tests (rule_name, requested_at) VALUES ('r', $1) "
            "RETURNING id",
            T0 - timedelta(days=days),
        )
        await db.execute(
            """INSERT INTO analytics_alert_deliveries (at, alert_id, test_id, rule_name, kind,
                   status, destination, attempt, latency_ms, ok)
               VALUES ($1, $2, NULL, 'r', 'alertmanager', 'firing', 'am:9093', 1, 1, true),
                      ($1, NULL, $3, 'r', 'webhook', 'test', 'hooks.example', 1, 1, true)""",
            T0 - timedelta(days=days),
            alert,
            test_id,
        )
    await housekeep(pool, settings, now=T0)  # ALERTS_DELIVERY_RETENTION_DAYS: 7
    ages = await db.fetch("SELECT at FROM analytics_alert_deliveries ORDER BY id")
    assert [r["at"] for r in ages] == [T0 - timedelta(days=6)] * 2
    tests = await db.fetch("SELECT requested_at FROM analytics_alert_tests")
    assert [r["requested_at"] for r in tests] == [T0 - timedelta(days=6)]
    assert await db.fetchval("SELECT state FROM analytics_alerts WHERE id = $1", alert) == "firing"
