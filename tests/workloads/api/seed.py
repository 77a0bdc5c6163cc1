"""Rows written straight into the tables the API reads, for hand-computed expectations."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from molam_workloads.core.measures import KEYS, MEASURES, MONEY_MEASURES


def hourly(
    hour: datetime,
    merchant_id: str | None,
    *,
    country: str = "SN",
    currency: str = "XOF",
    channel: str = "mobile_money",
    **measures: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "hour": hour,
        "merchant_id": merchant_id,
        "country": country,
        "currency": currency,
        "channel": channel,
    }
    for m in MEASURES:
        v = measures.get(m, 0)
        row[m] = Decimal(str(v)) if m in MONEY_MEASURES else int(v)
    return row


async def insert_hourly(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    cols = ("hour", *KEYS, *MEASURES)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    await conn.executemany(
        f"INSERT INTO txn_hourly_agg ({', '.join(cols)}) VALUES ({placeholders})",
        [tuple(r[c] for c in cols) for r in rows],
    )


async def insert_rule(
    conn: asyncpg.Connection, name: str, merchant_id: str | None, source: str = "api"
) -> None:
    from molam_workloads.core.rules import AlertRuleSpec, save_rule

    spec: dict[str, Any] = {
        "metric": "failure_rate",
        "comparison": "gt",
        "threshold": 0.2,
        "windowMinutes": 15,
    }
    if merchant_id:
        spec["scope"] = {"merchantId": merchant_id}
    await save_rule(conn, name=name, source=source, spec=AlertRuleSpec.model_validate(spec))


async def insert_alert(
    conn: asyncpg.Connection,
    rule_name: str,
    merchant_id: str | None,
    *,
    state: str = "firing",
    severity: str = "warning",
) -> int:
    scope = {"merchantId": merchant_id} if merchant_id else {}
    alert_id: int = await conn.fetchval(
        """INSERT INTO analytics_alerts (rule_id, rule_name, metric, severity, state, value,
               threshold, comparison, scope)
           VALUES ((SELECT id FROM analytics_alert_rules WHERE name = $1), $1, 'failure_rate',
                   $2, $3, 0.5, 0.2, 'gt', $4::jsonb)
           RETURNING id""",
        rule_name,
        severity,
        state,
        json.dumps(scope),
    )
    return alert_id


async def insert_anomaly(
    conn: asyncpg.Connection, key: str, merchant_id: str | None, bucket: datetime
) -> int:
    anomaly_id: int = await conn.fetchval(
        """INSERT INTO analytics_anomalies (anomaly_key, merchant_id, metric, bucket, value,
               baseline, zscore, direction)
           VALUES ($1, $2, 'tx_count', $3, 120, 40, 4.2, 'spike') RETURNING id""",
        key,
        merchant_id,
        bucket,
    )
    return anomaly_id
