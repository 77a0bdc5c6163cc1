"""Redis live counters: today's absolute figures per merchant, read back from PostgreSQL.

Redis is never incremented: after committed batches (at most every ``LIVE_REFRESH_SECONDS``
while they keep coming, at once when the consumer is idle) the consumer reads the day's totals
of the merchants they touched (and of the whole platform) from ``txn_hourly_agg`` and writes
them whole, so Redis cannot drift from the database however often a batch is retried or
replayed.

One hash per merchant per UTC day, ``core.cache.live_key`` (``live:merchant:<id>:<day>``, the
platform's ``live:platform:<day>``), with the fields ``core.live`` reads from PostgreSQL.

Two consumers may finish batches in either order; a small script keeps the write whose
``tx_count`` is not lower than what Redis holds (counts only grow within a day), so an older
read never overwrites a newer one. Only a hash of the same ``owner`` is compared: one of
another owner (a platform hash left under the old key ``live:merchant:_all:<day>``) is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime

import asyncpg
from redis.asyncio import Redis

from molam_workloads.core.cache import live_key
from molam_workloads.core.live import OWNER_FIELD, read_totals

# KEYS[1]: the hash; ARGV[1]: new tx_count, ARGV[2]: ttl seconds, ARGV[3]: owner,
# ARGV[4..]: field, value, ...
_SET_IF_NOT_OLDER = """
local held = redis.call('HMGET', KEYS[1], 'tx_count', 'owner')
if held[1] and held[2] == ARGV[3] and tonumber(held[1]) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class LiveCounters:
    def __init__(self, redis: Redis, reporting_currency: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._reporting = reporting_currency
        self._ttl = ttl_seconds
        self._script = redis.register_script(_SET_IF_NOT_OLDER)

    async def refresh(
        self, pool: asyncpg.Pool, merchants: Iterable[str | None], now: datetime | None = None
    ) -> int:
        """Rewrite today's hashes of ``merchants``; returns how many were set.

        ``merchants``: those with transactions counted today (``aggregation.merchants_on``); the
        platform's hash (``None``) is rewritten whenever any is.
        """
        now = now or datetime.now(UTC)
        today = now.date()
        touched = set(merchants)
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
                args: list[str | int] = [fields["tx_count"], self._ttl, fields[OWNER_FIELD]]
                for k, v in fields.items():
                    args += [k, v]
                await self._script(keys=[live_key(merchant, day)], args=args, client=pipe)
            await pipe.execute()
