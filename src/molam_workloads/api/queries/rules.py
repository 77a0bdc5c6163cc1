"""Alert rules as the API lists them: the stored document, its source and its status."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from molam_workloads.api.queries import Conn

# Same reading of the evaluator's state as core.rules.rule_status, for many rules at once.
_COLUMNS = """
    r.id, r.name, r.source, r.spec::text AS spec, r.created_at, r.updated_at,
    r.scope_merchant_id,
    CASE WHEN NOT r.is_active THEN 'Inactive' WHEN s.state = 'nodata' THEN 'NoData'
         ELSE initcap(coalesce(s.state, 'inactive')) END AS state,
    s.last_value, s.last_evaluated_at, s.last_fired_at, s.current_alert_id,
    CASE WHEN r.is_active THEN s.no_data_reason END AS no_data_reason
"""
_FROM = "FROM analytics_alert_rules r LEFT JOIN analytics_alert_rule_state s ON s.rule_id = r.id"


async def list_rules(
    conn: Conn, merchant_id: str | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    where = "WHERE ($1::text IS NULL OR r.scope_merchant_id = $1)"
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} {_FROM} {where} ORDER BY r.name LIMIT $2 OFFSET $3",
        merchant_id,
        limit,
        offset,
    )
    total: int = await conn.fetchval(
        f"SELECT count(*) FROM analytics_alert_rules r {where}", merchant_id
    )
    return list(rows), total


async def get_rule(conn: Conn, name: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_COLUMNS} {_FROM} WHERE r.name = $1", name
    )
    return row


async def lock_name(conn: Conn, name: str) -> None:
    """Serialise writers of one rule name until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('molam.rule:' || $1))", name)


def as_document(row: asyncpg.Record, *, with_notify: bool = True) -> dict[str, Any]:
    """The rule as the API shows it; ``with_notify=False`` leaves out ``spec.notify`` (its URLs
    carry credentials: a merchant's view never shows them)."""
    spec = json.loads(row["spec"])
    if not with_notify:
        spec.pop("notify", None)
    return {
        "id": row["id"],
        "name": row["name"],
        "source": row["source"],
        "spec": spec,
        "status": {
            "state": row["state"],
            "last_value": row["last_value"],
            "last_evaluated_at": row["last_evaluated_at"],
            "last_fired_at": row["last_fired_at"],
            "current_alert_id": row["current_alert_id"],
            "no_data_reason": row["no_data_reason"],
        },
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
