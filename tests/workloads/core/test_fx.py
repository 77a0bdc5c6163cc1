"""``core.fx``: the rate looked up by primary-key probes is ``fx_rate_ranges``' rate, at every
kind of instant (before the first rate, on a rate's midnight, between rates, after the last),
for a currency with rates, the reporting currency without a row and a currency with none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from molam_workloads.core import fx

RATES = [("2025-03-01", "XOF", "0.00160"), ("2025-03-03", "XOF", "0.00170"),
         ("2025-03-10", "XOF", "0.00150"), ("2025-03-02", "EUR", "1.05")]  # fmt: skip

LOOKUP = f"""
SELECT g.currency, g.ts, {fx.rate_expr("g", "$2")} AS rate
FROM (SELECT c AS currency, t AS ts
      FROM unnest($1::char(3)[]) c, unnest($3::timestamptz[]) t) g
{fx.rate_join("g", "g.ts", "$2")}
"""
# The reference: the view's ranges, as the rate_join of earlier versions read them.
REFERENCE = """
SELECT g.currency, g.ts,
       CASE WHEN g.currency = $2 THEN 1 ELSE r.rate END AS rate
FROM (SELECT c AS currency, t AS ts
      FROM unnest($1::char(3)[]) c, unnest($3::timestamptz[]) t) g
LEFT JOIN fx_rate_ranges r ON r.quote = $2 AND r.currency = g.currency
  AND g.ts >= r.valid_from AND g.ts < r.valid_to
"""


async def test_probes_give_the_rates_of_fx_rate_ranges(db: asyncpg.Connection) -> None:
    await db.execute("DELETE FROM fx_rates")
    await db.executemany(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ($1::text::date, $2, 'USD', $3)",
        [(d, c, Decimal(r)) for d, c, r in RATES],
    )
    day = datetime(2025, 3, 1, tzinfo=UTC)
    instants = [
        day - timedelta(days=400),  # before any rate: the first one
        day - timedelta(microseconds=1),
        day,
        day + timedelta(hours=23, minutes=59),
        day + timedelta(days=2),  # the midnight a new rate starts
        day + timedelta(days=2) - timedelta(microseconds=1),
        day + timedelta(days=5, hours=7),
        day + timedelta(days=9, hours=23),
        day + timedelta(days=9),
        day + timedelta(days=3000),  # after the last
    ]
    currencies = ["XOF", "EUR", "USD", "GBP"]
    args = (currencies, "USD", instants)
    got = sorted(tuple(r) for r in await db.fetch(LOOKUP, *args))
    want = sorted(tuple(r) for r in await db.fetch(REFERENCE, *args))
    assert got == want
    assert len(got) == len(currencies) * len(instants)
    rates = {(c, t): rate for c, t, rate in got}
    assert rates["XOF", day - timedelta(days=400)] == Decimal("0.00160")
    assert rates["XOF", day + timedelta(days=2)] == Decimal("0.00170")
    assert rates["XOF", day + timedelta(days=2) - timedelta(microseconds=1)] == Decimal("0.00160")
    assert rates["USD", day] == 1 and rates["GBP", day] is None
