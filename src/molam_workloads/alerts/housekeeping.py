"""Housekeeping the runbook asks for, run by the evaluator every ALERTS_HOUSEKEEPING_INTERVAL.

- resolved alerts older than ALERTS_RESOLVED_RETENTION_DAYS (30) are deleted, with their
  history and outbox rows (ON DELETE CASCADE);
- delivery-ledger rows and answered test requests older than ALERTS_DELIVERY_RETENTION_DAYS
  (7): re-posts to Alertmanager add a row per open alert and minute;
- ``txn_minute_agg`` rows older than MINUTE_AGG_RETENTION_HOURS (48) are deleted: minute
  buckets only serve short alert windows; longer windows read ``txn_hourly_agg``.

Deletes go in batches so no statement holds locks on a large table for long.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.db import delete_in_chunks

log = logging.getLogger(__name__)

BATCH = 50_000


@dataclass(frozen=True)
class HousekeepingReport:
    alerts_deleted: int
    minute_rows_deleted: int


async def housekeep(
    pool: asyncpg.Pool, settings: AlertsSettings, now: datetime | None = None
) -> HousekeepingReport:
    now = now or datetime.now(UTC)
    alerts = await delete_in_chunks(
        pool,
        """
        DELETE FROM analytics_alerts WHERE id IN (
            SELECT id FROM analytics_alerts
            WHERE state = 'resolved' AND resolved_at < $1 LIMIT $2)
        """,
        now - timedelta(days=settings.alerts_resolved_retention_days),
        BATCH,
    )
    ledger_cutoff = now - timedelta(days=settings.alerts_delivery_retention_days)
    await delete_in_chunks(
        pool,
        """
        DELETE FROM analytics_alert_deliveries WHERE id IN (
            SELECT id FROM analytics_alert_deliveries WHERE at < $1 LIMIT $2)
        """,
        ledger_cutoff,
        BATCH,
    )
    await delete_in_chunks(
        pool,
        """
        DELETE FROM analytics_alert_tests WHERE id IN (
            SELECT id FROM analytics_alert_tests WHERE requested_at < $1 LIMIT $2)
        """,
        ledger_cutoff,
        BATCH,
    )
    minutes = await delete_in_chunks(
        pool,
        """
        DELETE FROM txn_minute_agg WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM txn_minute_agg WHERE minute < $1 LIMIT $2))
        """,
        now - timedelta(hours=settings.minute_agg_retention_hours),
        BATCH,
    )
    log.info(
        "housekeeping: deleted %d resolved alert(s) older than %d days, "
        "%d txn_minute_agg row(s) older than %dh",
        alerts,
        settings.alerts_resolved_retention_days,
        minutes,
        settings.minute_agg_retention_hours,
    )
    return HousekeepingReport(alerts, minutes)
