"""Alerts and anomalies as the API lists them, and the two human transitions of an alert."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from molam_workloads.api.queries import Conn

ALERT_COLUMNS = """
    id, rule_id, rule_name, metric, severity, state, value, threshold, comparison,
    scope::text AS scope, started_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by
"""
_ALERT_WHERE = """
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::text IS NULL OR severity = $2)
  AND ($3::text IS NULL OR scope->>'merchantId' = $3)
"""


async def list_alerts(
    conn: Conn,
    state: str | None,
    severity: str | None,
    merchant_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[asyncpg.Record], int]:
    rows = await conn.fetch(
        f"SELECT {ALERT_COLUMNS} FROM analytics_alerts {_ALERT_WHERE} "
        "ORDER BY started_at DESC, id DESC LIMIT $4 OFFSET $5",
        state,
        severity,
        merchant_id,
        limit,
        offset,
    )
    total: int = await conn.fetchval(
        f"SELECT count(*) FROM analytics_alerts {_ALERT_WHERE}", state, severity, merchant_id
    )
    return list(rows), total


async def get_alert(
    conn: Conn, alert_id: int, *, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {ALERT_COLUMNS} FROM analytics_alerts WHERE id = $1{lock}", alert_id
    )
    return row


async def transition(
    conn: Conn, alert_id: int, event: str, actor: str, comment: str | None
) -> None:
    """Record ``acknowledged`` or ``resolved`` by ``actor`` (the token's ``sub``)."""
    if event == "acknowledged":
        sql = """UPDATE analytics_alerts SET state = 'acknowledged', acknowledged_at = now(),
                 acknowledged_by = $2 WHERE id = $1"""
    else:
        sql = """UPDATE analytics_alerts SET state = 'resolved', resolved_at = now(),
                 resolved_by = $2 WHERE id = $1"""
    await conn.execute(sql, alert_id, actor)
    detail = {"comment": comment, "via": "api"} if comment else {"via": "api"}
    await conn.execute(
        "INSERT INTO analytics_alert_events (alert_id, event, actor, detail) "
        "VALUES ($1, $2, $3, $4::jsonb)",
        alert_id,
        event,
        actor,
        json.dumps(detail),
    )


def alert_document(row: asyncpg.Record) -> dict[str, Any]:
    doc = dict(row)
    doc["scope"] = json.loads(row["scope"])
    return doc


ANOMALY_COLUMNS = """
    id, merchant_id, metric, bucket, value, baseline, zscore, direction, detected_at,
    details::text AS details
"""
_ANOMALY_WHERE = """
WHERE ($1::text IS NULL OR merchant_id = $1)
  AND ($2::timestamptz IS NULL OR detected_at >= $2)
  AND ($3::timestamptz IS NULL OR detected_at < $3)
  AND ($4::text IS NULL OR direction = $4)
"""


async def list_anomalies(
    conn: Conn,
    merchant_id: str | None,
    start: Any,
    end: Any,
    direction: str | None,
    limit: int,
    offset: int,
) -> tuple[list[asyncpg.Record], int]:
    args = (merchant_id, start, end, direction)
    rows = await conn.fetch(
        f"SELECT {ANOMALY_COLUMNS} FROM analytics_anomalies {_ANOMALY_WHERE} "
        "ORDER BY detected_at DESC, id DESC LIMIT $5 OFFSET $6",
        *args,
        limit,
        offset,
    )
    total: int = await conn.fetchval(
        f"SELECT count(*) FROM analytics_anomalies {_ANOMALY_WHERE}", *args
    )
    return list(rows), total


def anomaly_document(row: asyncpg.Record) -> dict[str, Any]:
    doc = dict(row)
    doc["details"] = json.loads(row["details"])
    return doc
