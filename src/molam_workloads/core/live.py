"""Today's live counters as PostgreSQL computes them: the fields of a ``live:merchant:*`` hash.

The consumer writes these hashes to Redis after committed batches (``ingest/live_counters.py``)
and the API falls back to the same reader when a hash is missing, so both agree on every field:

- ``tx_count``, ``succeeded_count``, ``failed_count``, ``pending_count`` — every transaction;
- ``payment_count``, ``refund_count``, ``payout_count``, ``transfer_count`` — succeeded ones;
- ``gross_volume:<CUR>`` and ``fee:<CUR>`` — decimal strings in each currency seen today;
- ``gross_volume_reporting`` — all of it converted to ``reporting_currency`` (absent when a
  currency has no FX rate), ``as_of`` — when it was read;
- ``owner`` — whose figures these are (``owner_tag``): a reader serves a hash only when it names
  the owner asked for, so a hash left under another layout's key is never taken for another's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.core.fx import rate_expr, rate_join

COUNT_FIELDS = (
    "tx_count",
    "succeeded_count",
    "failed_count",
    "pending_count",
    "payment_count",
    "refund_count",
    "payout_count",
    "transfer_count",
)

_SUMS = ", ".join(f"sum(a.{c})::bigint AS {c}" for c in COUNT_FIELDS)

OWNER_FIELD = "owner"

# A connection of its own or one lent by the pool.
Conn = asyncpg.Connection | PoolConnectionProxy


def _totals_sql(owner: str, where: str) -> str:
    # [$1, $2) is one UTC day, which has one rate per currency: the sums are converted once
    # per (owner, currency), not once per hourly row (numeric products are exact, so the
    # figure is the same).
    return f"""
SELECT g.*, g.gross * {rate_expr("g", "$3")} AS gross_reporting,
       {rate_expr("g", "$3")} IS NULL AS unconverted
FROM (SELECT {owner} AS owner, a.currency, {_SUMS},
             sum(a.gross_volume_local) AS gross, sum(a.fee_local) AS fee
      FROM txn_hourly_agg a
      WHERE a.hour >= $1 AND a.hour < $2 {where}
      GROUP BY 1, a.currency) g
{rate_join("g", "$1::timestamptz", "$3")}
"""


_MERCHANTS_SQL = _totals_sql("a.merchant_id", "AND a.merchant_id = ANY($4::text[])")
_PLATFORM_SQL = _totals_sql("NULL::text", "")


def owner_tag(merchant_id: str | None) -> str:
    """The ``owner`` field of a hash: ``platform``, or ``merchant:<id>``."""
    return "platform" if merchant_id is None else f"merchant:{merchant_id}"


def fold(
    rows: Iterable[asyncpg.Record],
    reporting: str,
    now: datetime,
    owners: Iterable[str | None] = (),
) -> dict[str | None, dict[str, str]]:
    """Per-currency total rows (``owner``, ``currency``, sums) -> hash fields per owner; each of
    ``owners`` is present even without a row (zero counts: no transaction today)."""
    acc: dict[str | None, dict[str, Any]] = {}

    def blank() -> dict[str, Any]:
        return {c: 0 for c in COUNT_FIELDS} | {"_rep": Decimal(0)}

    for owner in owners:
        acc[owner] = blank()
    for r in rows:
        h = acc.setdefault(r["owner"], blank())
        for c in COUNT_FIELDS:
            h[c] += r[c]
        h[f"gross_volume:{r['currency'].strip()}"] = r["gross"]
        h[f"fee:{r['currency'].strip()}"] = r["fee"]
        if r["unconverted"]:
            h["_unconverted"] = True
        else:
            h["_rep"] += r["gross_reporting"]
    out: dict[str | None, dict[str, str]] = {}
    for owner, h in acc.items():
        fields = {k: str(v) for k, v in h.items() if not k.startswith("_")}
        if not h.get("_unconverted"):
            fields["gross_volume_reporting"] = str(h["_rep"])
        fields["reporting_currency"] = reporting
        fields["as_of"] = now.isoformat()
        fields[OWNER_FIELD] = owner_tag(owner)
        out[owner] = fields
    return out


async def read_totals(
    conn: Conn,
    day: date,
    merchants: Iterable[str],
    reporting: str,
    now: datetime | None = None,
    *,
    platform: bool = True,
) -> dict[str | None, dict[str, str]]:
    """Hash fields of ``day`` for each merchant given, plus the platform's under ``None``.

    Transactions without a merchant (wallet-to-wallet) count in the platform's hash only: the
    key scheme gives them none of their own.
    """
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    names = sorted(set(merchants))
    rows: list[asyncpg.Record] = []
    if platform:
        rows += await conn.fetch(_PLATFORM_SQL, start, end, reporting)
    if names:
        rows += await conn.fetch(_MERCHANTS_SQL, start, end, reporting, names)
    owners: list[str | None] = [*names, *([None] if platform else [])]
    return fold(rows, reporting, now or datetime.now(UTC), owners)
