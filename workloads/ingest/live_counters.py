"""Redis live counters: today's absolute figures per merchant, read back from PostgreSQL.

Redis is never incremented: after each committed batch the consumer reads the day's totals of
the merchants it touched (and of the whole platform) from ``txn_hourly_agg`` and writes them
whole, so Redis cannot drift from the database however often a batch is retried or replayed.

One hash per merchant per UTC day, ``core.cache.live_key`` (``live:merchant:<id>:<day>``, the
platform under ``_all``), with these fields:

- ``tx_count``, ``succeeded_count``, ``failed_count``, ``pending_count`` — every transaction;
- ``payment_count``, ``refund_count``, ``payout_count``, ``transfer_count`` — succeeded ones;
- ``gross_volume:<CUR>`` and ``fee:<CUR>`` — decimal strings in each currency seen today;
- ``gross_volume_reporting`` — all of it converted to ``reporting_currency`` (absent when a
  currency has no FX rate), ``as_of`` — when it was read.

Two consumers may finish batches in either order; a small script keeps the write whose
``tx_count`` is not lower than what Redis holds (counts only grow within a day), so an older
read never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis

from molam_workloads.core.cache import live_key
from molam_workloads.core.events import TransactionEvent
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

# A connection of its own or one lent by the pool.
Conn = asyncpg.Connection | PoolConnectionProxy


def _totals_sql(owner: str, where: str) -> str:
    return f"""
SELECT {owner} AS owner, a.currency, {_SUMS},
       sum(a.gross_volume_local) AS gross, sum(a.fee_local) AS fee,
       sum(a.gross_volume_local * {rate_expr("a", "$3")}) AS gross_reporting,
       bool_or({rate_expr("a", "$3")} IS NULL) AS unconverted
FROM txn_hourly_agg a
{rate_join("a", "a.hour", "$3")}
WHERE a.hour >= $1 AND a.hour < $2 {where}
GROUP BY 1, a.currency
"""


_MERCHANTS_SQL = _totals_sql("a.merchant_id", "AND a.merchant_id = ANY($4::text[])")
_PLATFORM_SQL = _totals_sql("NULL::text", "")

# KEYS[1]: the hash; ARGV[1]: new tx_count, ARGV[2]: ttl seconds, ARGV[3..]: field, value, ...
_SET_IF_NOT_OLDER = """
local current = redis.call('HGET', KEYS[1], 'tx_count')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def merchants_touched_on(events: Iterable[TransactionEvent], day: date) -> set[str | None]:
    return {ev.merchant_id for ev in events if ev.occurred_at.date() == day}


def fold(
    rows: Iterable[asyncpg.Record], reporting: str, now: datetime
) -> dict[str | None, dict[str, str]]:
    """Per-currency total rows (``owner``, ``currency``, sums) -> hash fields per owner."""
    acc: dict[str | None, dict[str, Any]] = {}
    for r in rows:
        h = acc.setdefault(r["owner"], {c: 0 for c in COUNT_FIELDS} | {"_rep": Decimal(0)})
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
        out[owner] = fields
    return out


async def read_totals(
    conn: Conn,
    day: date,
    merchants: Iterable[str],
    reporting: str,
    now: datetime | None = None,
) -> dict[str | None, dict[str, str]]:
    """Hash fields of ``day`` for each merchant given, plus the platform's under ``None``.

    Transactions without a merchant (wallet-to-wallet) count in the platform's hash only: the
    key scheme gives them none of their own.
    """
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    names = sorted(set(merchants))
    rows = list(await conn.fetch(_PLATFORM_SQL, start, end, reporting))
    if names:
        rows += await conn.fetch(_MERCHANTS_SQL, start, end, reporting, names)
    return fold(rows, reporting, now or datetime.now(UTC))


class LiveCounters:
    def __init__(self, redis: Redis, reporting_currency: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._reporting = reporting_currency
        self._ttl = ttl_seconds
        self._script = redis.register_script(_SET_IF_NOT_OLDER)

    async def refresh(
        self, pool: asyncpg.Pool, events: Iterable[TransactionEvent], now: datetime | None = None
    ) -> int:
        """Rewrite today's hashes of the merchants in ``events``; returns how many were set."""
        now = now or datetime.now(UTC)
        today = now.date()
        touched = merchants_touched_on(events, today)
        if not touched:
            return 0
        async with pool.acquire() as conn:
            totals = await read_totals(
                conn, today, (m for m in touched if m is not None), self._reporting, now
            )
        await self.write(today, totals)
        return len(totals)

    async def write(self, day: date, totals: dict[str | None, dict[str, str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for merchant, fields in totals.items():
                args: list[str | int] = [fields["tx_count"], self._ttl]
                for k, v in fields.items():
                    args += [k, v]
                await self._script(keys=[live_key(merchant, day)], args=args, client=pipe)
            await pipe.execute()
