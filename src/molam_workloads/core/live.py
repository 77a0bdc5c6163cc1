"""Today's live counters as PostgreSQL computes them: the fields of a ``live:merchant:*`` hash.

The consumer writes these hashes to Redis after committed batches (``ingest/live_counters.py``,
from ``read_hashes``: PostgreSQL writes the fields) and the API falls back to ``read_totals``
(the same documents, decoded) when a hash is missing; decimals are written as Python's
``str(Decimal)`` does (tests/workloads/core/test_live.py holds them to a Python reference):

- ``tx_count``, ``succeeded_count``, ``failed_count``, ``pending_count`` — every transaction;
- ``payment_count``, ``refund_count``, ``payout_count``, ``transfer_count`` — succeeded ones;
- ``gross_volume:<CUR>`` and ``fee:<CUR>`` — decimal strings in each currency seen today;
- ``gross_volume_reporting`` — all of it converted to ``reporting_currency`` (absent when a
  currency has no FX rate), ``as_of`` — when it was read;
- ``owner`` — whose figures these are (``owner_tag``): a reader serves a hash only when it names
  the owner asked for, so a hash left under another layout's key is never taken for another's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

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


def owner_tag(merchant_id: str | None) -> str:
    """The ``owner`` field of a hash: ``platform``, or ``merchant:<id>``."""
    return "platform" if merchant_id is None else f"merchant:{merchant_id}"


def _py_text(x: str) -> str:
    """SQL text of the numeric ``x`` as Python's ``str(Decimal)`` writes the value asyncpg
    decodes: PostgreSQL's own text, except below 1e-6 (a zero of more than 6 decimals
    included), where Python uses exponent notation (``0E-16``, ``1.16E-8``)."""
    digits = f"ltrim(replace(abs({x})::text, '.', ''), '0')"
    return f"""(CASE WHEN scale({x}) <= 6 OR abs({x}) >= 0.000001 THEN ({x})::text
ELSE (CASE WHEN {x} < 0 THEN '-' ELSE '' END)
     || left(coalesce(nullif({digits}, ''), '0'), 1)
     || (CASE WHEN length({digits}) > 1 THEN '.' || substr({digits}, 2) ELSE '' END)
     || 'E' || (greatest(length({digits}), 1) - 1 - scale({x}))::text END)"""


def _json_str(x: str) -> str:
    """SQL: the JSON string of the text ``x`` (quoted and escaped)."""
    return f"to_json(({x})::text)::text"


def _hashes_sql(owner: str, where: str, owners: str, join: str) -> str:
    # Each hash's fields, from per (owner, currency) sums of the day, written by PostgreSQL as
    # one JSON array per chunk of owners ([tx_count, owner tag, [field, value, ...]] each, in
    # ``owners``' order): the consumer hands it to Redis as it is, with no Python per merchant.
    # The JSON is concatenated text: numbers and counts need no escaping, names go through
    # to_json. Each currency's rate is looked up once (``r``), not once per owner: the day has
    # one rate per currency, so the figures are the same.
    sums = ", ".join(f"sum(t.{c})::bigint AS {c}" for c in COUNT_FIELDS)
    counts = " || ',' || ".join(
        f"'\"{c}\",\"' || coalesce(h.{c}, 0)::text || '\"'" for c in COUNT_FIELDS
    )
    cur = "btrim(t.currency::text)"
    tag = _json_str("CASE WHEN o.owner IS NULL THEN 'platform' ELSE 'merchant:' || o.owner END")
    return f"""
WITH g AS (
    SELECT {owner} AS owner, a.currency, {_SUMS},
           sum(a.gross_volume_local) AS gross, sum(a.fee_local) AS fee
    FROM txn_hourly_agg a
    WHERE a.hour >= $1 AND a.hour < $2 {where}
    GROUP BY 1, a.currency
),
r AS (
    SELECT c.currency, {rate_expr("c", "$3")} AS rate
    FROM (SELECT DISTINCT g.currency FROM g) c
    {rate_join("c", "$1::timestamptz", "$3")}
),
t AS (
    SELECT g.*, g.gross * r.rate AS gross_reporting, r.rate IS NULL AS unconverted
    FROM g JOIN r ON r.currency = g.currency
),
h AS (
    SELECT t.owner, {sums}, bool_or(t.unconverted) AS unconverted,
           sum(t.gross_reporting) AS rep,
           string_agg(',' || {_json_str("'gross_volume:' || " + cur)}
                      || ',"' || {_py_text("t.gross")} || '",'
                      || {_json_str("'fee:' || " + cur)} || ',"' || {_py_text("t.fee")} || '"',
                      '') AS cur
    FROM t GROUP BY t.owner
),
f AS (
    SELECT o.ord, '["' || coalesce(h.tx_count, 0)::text || '",' || o.tag || ',['
           || {counts} || coalesce(h.cur, '')
           || (CASE WHEN h.unconverted THEN ''
                    ELSE ',"gross_volume_reporting","' || {_py_text("coalesce(h.rep, 0)")} || '"'
               END)
           || $5 || ',"{OWNER_FIELD}",' || o.tag || ']]' AS doc
    FROM (SELECT o.*, {tag} AS tag FROM ({owners}) o) o LEFT JOIN h ON {join}
)
SELECT (f.ord - 1) / $6 AS chunk, '[' || string_agg(f.doc, ',' ORDER BY f.ord) || ']' AS doc
FROM f GROUP BY 1 ORDER BY 1
"""


_MERCHANT_HASHES_SQL = _hashes_sql(
    "a.merchant_id",
    "AND a.merchant_id = ANY($4::text[])",
    "SELECT m.owner, m.ord FROM unnest($4::text[]) WITH ORDINALITY m(owner, ord)",
    "h.owner = o.owner",
)
_PLATFORM_HASHES_SQL = _hashes_sql(
    "NULL::text",
    "AND $4::text[] IS NULL",  # no merchant list: every row (the parameter keeps one signature)
    "SELECT NULL::text AS owner, 1::bigint AS ord",
    "true",
)


async def read_hashes(
    conn: Conn,
    day: date,
    merchants: Iterable[str],
    reporting: str,
    now: datetime,
    chunk: int,
    *,
    platform: bool = True,
) -> list[tuple[list[str | None], str]]:
    """``read_totals``' hash fields as PostgreSQL writes them: per chunk of at most ``chunk``
    owners, the owners (merchants sorted, then the platform's ``None``) and one JSON array of
    ``[tx_count, owner tag, [field, value, ...]]``, one per owner in that order.

    Decimals are written as Python's ``str(Decimal)`` does (tests/workloads/core/test_live.py
    holds every field to a Python reference), without decoding a row in Python: a refresh of
    thousands of merchants costs the consumer a few strings, not thousands of records.
    """
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    names = sorted(set(merchants))
    out: list[tuple[list[str | None], str]] = []
    args = (start, end, reporting)
    # The fields every hash ends with, written once (JSON: ``, "reporting_currency", "USD", ...``).
    tail = "," + json.dumps(["reporting_currency", reporting, "as_of", now.isoformat()])[1:-1]
    if names:
        for r in await conn.fetch(_MERCHANT_HASHES_SQL, *args, names, tail, chunk):
            out.append(([*names[r["chunk"] * chunk : (r["chunk"] + 1) * chunk]], r["doc"]))
    if platform:
        doc = await conn.fetchval(_PLATFORM_HASHES_SQL, *args, None, tail, 1, column=1)
        out.append(([None], doc))
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
    """Hash fields of ``day`` for each merchant given, plus the platform's under ``None``:
    ``read_hashes``' documents, decoded (the API's reader when a hash is missing).

    Transactions without a merchant (wallet-to-wallet) count in the platform's hash only: the
    key scheme gives them none of their own.
    """
    names = sorted(set(merchants))
    chunks = await read_hashes(
        conn,
        day,
        names,
        reporting,
        now or datetime.now(UTC),
        max(1, len(names)),
        platform=platform,
    )
    out: dict[str | None, dict[str, str]] = {}
    for owners, doc in chunks:
        for owner, (_, _, flat) in zip(owners, json.loads(doc), strict=True):
            out[owner] = dict(zip(flat[::2], flat[1::2], strict=True))
    return out
