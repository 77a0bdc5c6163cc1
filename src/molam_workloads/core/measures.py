"""The measures of an aggregate bucket: their names and order, and their SQL definition.

A bucket of ``txn_hourly_agg`` / ``txn_minute_agg`` is (time bucket, merchant, country,
currency, channel). ``tx_count`` and ``gross_volume_local`` count every transaction whatever its
type and status (they reconcile with ``wallet_transactions``); the per-type measures and fees
count succeeded transactions only, as the schema documents. Every measure is a sum, so a
batch's buckets can be *added* to what a table already holds.

The consumer sums each batch in Python in ``MEASURES`` order (``ingest.aggregation``, checked
against an event-by-event reference); backfill aggregates ``wallet_transactions`` with the SQL
expressions below (tests check that both give the same rows). A SQL source needs the columns
``occurred_at`` (timestamptz), ``merchant_id``, ``country``, ``currency``, ``channel``,
``type``, ``status`` (text) and ``amount``, ``fee`` (numeric).
"""

from __future__ import annotations

from molam_workloads.core.events import TxnType

MEASURES: tuple[str, ...] = (
    "tx_count",
    "succeeded_count",
    "failed_count",
    "pending_count",
    "gross_volume_local",
    "payment_count",
    "payment_volume_local",
    "refund_count",
    "refund_volume_local",
    "payout_count",
    "payout_volume_local",
    "transfer_count",
    "transfer_volume_local",
    "fee_local",
)
MONEY_MEASURES = frozenset(m for m in MEASURES if m.endswith("_local"))
# The bucket's columns after its time column.
KEYS: tuple[str, ...] = ("merchant_id", "country", "currency", "channel")


def measure_exprs() -> list[str]:
    """One aggregate expression per ``MEASURES`` entry, in that order."""
    ok = "status = 'succeeded'"
    exprs = [
        "count(*)",
        f"count(*) FILTER (WHERE {ok})",
        "count(*) FILTER (WHERE status = 'failed')",
        "count(*) FILTER (WHERE status = 'pending')",
        "sum(amount)",
    ]
    for kind in (t.value for t in TxnType):
        cond = f"{ok} AND type = '{kind}'"
        exprs += [
            f"count(*) FILTER (WHERE {cond})",
            f"coalesce(sum(amount) FILTER (WHERE {cond}), 0)",
        ]
    exprs.append(f"coalesce(sum(fee) FILTER (WHERE {ok}), 0)")
    return exprs


def grouped_select(unit: str, time_column: str, source: str, where: str = "TRUE") -> str:
    """``SELECT`` of ``source``'s buckets per ``unit`` (hour or minute, UTC)."""
    measures = ",\n       ".join(
        f"{e} AS {m}" for e, m in zip(measure_exprs(), MEASURES, strict=True)
    )
    return f"""SELECT date_trunc('{unit}', occurred_at, 'UTC') AS {time_column},
       {", ".join(KEYS)},
       {measures}
    FROM {source}
    WHERE {where}
    GROUP BY 1, 2, 3, 4, 5"""
