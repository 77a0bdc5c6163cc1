"""Today's live counters from PostgreSQL, for when the Redis hash is missing.

The fields are those the consumer writes (``ingest/live_counters.py``): the counts, then
``gross_volume:<CUR>`` (every amount) and ``fee:<CUR>`` per currency seen today,
``gross_volume_reporting`` (absent when a currency has no FX rate), ``reporting_currency`` and
``as_of``. The API may not import the consumer, so the query is written again here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from molam_workloads.api.queries import Conn
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
_SQL = f"""
SELECT a.currency::text AS currency, {_SUMS},
       sum(a.gross_volume_local) AS gross, sum(a.fee_local) AS fee,
       sum(a.gross_volume_local * {rate_expr("a", "$3")}) AS gross_reporting,
       bool_or({rate_expr("a", "$3")} IS NULL) AS unconverted
FROM txn_hourly_agg a
{rate_join("a", "a.hour", "$3")}
WHERE a.hour >= $1 AND a.hour < $2 AND ($4::text IS NULL OR a.merchant_id = $4)
GROUP BY a.currency
"""


async def live_from_db(
    conn: Conn, merchant_id: str | None, day: date, reporting: str
) -> dict[str, str]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    rows = await conn.fetch(_SQL, start, start + timedelta(days=1), reporting, merchant_id)
    counts = dict.fromkeys(COUNT_FIELDS, 0)
    fields: dict[str, str] = {}
    reporting_total = Decimal(0)
    unconverted = False
    for r in rows:
        for c in COUNT_FIELDS:
            counts[c] += r[c]
        cur = r["currency"].strip()
        fields[f"gross_volume:{cur}"] = str(r["gross"])
        fields[f"fee:{cur}"] = str(r["fee"])
        if r["unconverted"]:
            unconverted = True
        else:
            reporting_total += r["gross_reporting"]
    out = {c: str(v) for c, v in counts.items()} | fields
    if not unconverted:
        out["gross_volume_reporting"] = str(reporting_total)
    out["reporting_currency"] = reporting
    out["as_of"] = datetime.now(UTC).isoformat()
    return out
