"""``core.live.read_hashes`` (PostgreSQL builds each live hash's fields, for the consumer and,
decoded by ``read_totals``, for the API's reader) gives exactly what a Python reference folds
from the day's sums, decimals written as ``str(Decimal)`` writes them, against real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from typing import Any

import asyncpg

from molam_workloads.core.fx import rate_expr, rate_join
from molam_workloads.core.live import COUNT_FIELDS, owner_tag, read_hashes, read_totals
from molam_workloads.core.measures import KEYS, MEASURES, MONEY_MEASURES

# The largest numeric(24, 4): its figure in USD has 37 digits, past Decimal's default 28.
HUGE = "99999999999999999999.9999"


def _row(hour: datetime, merchant: str | None, currency: str, **measures: Any) -> tuple[Any, ...]:
    keys = {"merchant_id": merchant, "country": "SN", "currency": currency, "channel": "card"}
    values = {
        m: Decimal(str(measures.get(m, 0))) if m in MONEY_MEASURES else int(measures.get(m, 0))
        for m in MEASURES
    }
    return (hour, *(keys[k] for k in KEYS), *(values[m] for m in MEASURES))


async def _seed(db: asyncpg.Connection, hour: datetime) -> None:
    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ('2024-01-01', 'ZZA', 'USD',"
        " 0.000000000001) ON CONFLICT DO NOTHING"
    )
    rows = [
        # Two currencies, two hours, every count.
        _row(hour, "M-two", "XOF", tx_count=5, succeeded_count=3, failed_count=1,
             pending_count=1, payment_count=2, refund_count=1, gross_volume_local="12345.6789",
             fee_local="12.5"),
        _row(hour - timedelta(hours=1), "M-two", "XOF", tx_count=2, succeeded_count=2,
             payment_count=2, gross_volume_local="10", fee_local="0.1"),
        _row(hour, "M-two", "EUR", tx_count=1, succeeded_count=1, payout_count=1,
             gross_volume_local="7.25"),
        # A currency without any FX rate: no converted figure at all.
        _row(hour, "M-unconverted", "ZZZ", tx_count=1, succeeded_count=1,
             gross_volume_local="3"),
        _row(hour, "M-unconverted", "XOF", tx_count=1, succeeded_count=1,
             gross_volume_local="4"),
        # Python writes these converted figures with an exponent: 0E-16, 1.2340E-12.
        _row(hour, "M-zero", "XOF", tx_count=3, failed_count=3),
        _row(hour, "M-tiny", "ZZA", tx_count=1, succeeded_count=1, gross_volume_local="1.234"),
        # Exact beyond 28 digits, and the reporting currency itself (rate 1).
        _row(hour, "M-huge", "EUR", tx_count=1, succeeded_count=1, gross_volume_local=HUGE,
             fee_local=HUGE),
        _row(hour, "M-huge", "USD", tx_count=1, succeeded_count=1, transfer_count=1,
             gross_volume_local="0.0001"),
        # Ids that JSON must escape; a wallet transaction without a merchant (platform only).
        _row(hour, 'M-"q\\uote"-é', "GHS", tx_count=1, succeeded_count=1,
             gross_volume_local="1"),
        _row(hour, None, "XOF", tx_count=4, succeeded_count=4, transfer_count=4,
             gross_volume_local="100"),
        # Yesterday: counted in no hash of today.
        _row(hour - timedelta(days=1), "M-two", "XOF", tx_count=100, gross_volume_local="1"),
    ]  # fmt: skip
    cols = ("hour", *KEYS, *MEASURES)
    await db.executemany(
        f"INSERT INTO txn_hourly_agg ({', '.join(cols)})"
        f" VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))})",
        rows,
    )


# The reference: per (owner, currency) sums of the day, converted at the day's rate, folded into
# hash fields in Python (exact: Decimal's default context would round past 28 digits).
_SUMS = ", ".join(f"sum(a.{c})::bigint AS {c}" for c in COUNT_FIELDS)
_PER_CURRENCY = f"""
SELECT g.*, g.gross * {rate_expr("g", "$3")} AS gross_reporting,
       {rate_expr("g", "$3")} IS NULL AS unconverted
FROM (SELECT a.merchant_id AS owner, a.currency, {_SUMS},
             sum(a.gross_volume_local) AS gross, sum(a.fee_local) AS fee
      FROM txn_hourly_agg a WHERE a.hour >= $1 AND a.hour < $2 AND a.merchant_id IS NOT NULL
      GROUP BY 1, a.currency
      UNION ALL
      SELECT NULL, a.currency, {_SUMS}, sum(a.gross_volume_local), sum(a.fee_local)
      FROM txn_hourly_agg a WHERE a.hour >= $1 AND a.hour < $2 GROUP BY 2) g
{rate_join("g", "$1::timestamptz", "$3")}
"""


async def reference(
    db: asyncpg.Connection, day: date, merchants: list[str], reporting: str, now: datetime
) -> dict[str | None, dict[str, str]]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    acc: dict[str | None, dict[str, Any]] = {
        o: {c: 0 for c in COUNT_FIELDS} | {"_rep": Decimal(0)} for o in [*merchants, None]
    }
    for r in await db.fetch(_PER_CURRENCY, start, start + timedelta(days=1), reporting):
        if r["owner"] not in acc:
            continue
        h = acc[r["owner"]]
        for c in COUNT_FIELDS:
            h[c] += r[c]
        h[f"gross_volume:{r['currency'].strip()}"] = r["gross"]
        h[f"fee:{r['currency'].strip()}"] = r["fee"]
        if r["unconverted"]:
            h["_unconverted"] = True
        else:
            with localcontext(prec=1000):
                h["_rep"] += r["gross_reporting"]
    out: dict[str | None, dict[str, str]] = {}
    for owner, h in acc.items():
        fields = {k: str(v) for k, v in h.items() if not k.startswith("_")}
        if not h.get("_unconverted"):
            fields["gross_volume_reporting"] = str(h["_rep"])
        fields |= {"reporting_currency": reporting, "as_of": now.isoformat()}
        fields["owner"] = owner_tag(owner)
        out[owner] = fields
    return out


async def test_postgresql_builds_exactly_the_fields_python_folds(db: asyncpg.Connection) -> None:
    now = datetime.now(UTC).replace(minute=30)
    hour = now.replace(minute=0, second=0, microsecond=0)
    if hour.hour == 0:  # both seeded hours within today
        now, hour = now + timedelta(hours=1), hour + timedelta(hours=1)
    await _seed(db, hour)
    merchants = ["M-two", "M-unconverted", "M-zero", "M-tiny", "M-huge", 'M-"q\\uote"-é']
    merchants.append("M-none-today")  # no row today: zero counts
    expected = await reference(db, now.date(), merchants, "USD", now)
    # The cases this test is for are there (written as str(Decimal) writes them).
    assert "gross_volume_reporting" not in expected["M-unconverted"]
    assert expected["M-zero"]["gross_volume_reporting"] == "0E-16"
    assert expected["M-tiny"]["gross_volume_reporting"] == "1.2340E-12"
    assert expected["M-huge"]["gross_volume_reporting"] == "107999999999999999999.9999920000000000"
    assert expected["M-none-today"]["tx_count"] == "0"
    assert expected["M-none-today"]["gross_volume_reporting"] == "0"

    chunks = await read_hashes(db, now.date(), reversed(merchants), "USD", now, chunk=3)
    # Sorted merchants, at most 3 per chunk, then the platform alone.
    assert [owners for owners, _ in chunks] == [
        sorted(merchants)[:3],
        sorted(merchants)[3:6],
        sorted(merchants)[6:],
        [None],
    ]
    got: dict[str | None, dict[str, str]] = {}
    for owners, doc in chunks:
        entries = json.loads(doc)
        assert len(entries) == len(owners)
        for owner, (tx_count, tag, flat) in zip(owners, entries, strict=True):
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            assert len(fields) == len(flat) // 2  # no field twice
            assert tx_count == fields["tx_count"] and tag == fields["owner"]
            got[owner] = fields
    assert got == expected
    assert set(COUNT_FIELDS) <= set(got[None])
    assert await read_totals(db, now.date(), merchants, "USD", now) == expected  # the API's


async def test_no_merchant_and_no_platform_reads_nothing(db: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    assert await read_hashes(db, now.date(), [], "USD", now, 10, platform=False) == []
    [(owners, doc)] = await read_hashes(db, now.date(), [], "USD", now, 10)
    assert owners == [None]
    [[tx_count, tag, flat]] = json.loads(doc)
    assert (tx_count, tag) == ("0", "platform")
    assert (
        dict(zip(flat[::2], flat[1::2], strict=True))
        == (await reference(db, now.date(), [], "USD", now))[None]
        == (await read_totals(db, now.date(), [], "USD", now))[None]
    )
