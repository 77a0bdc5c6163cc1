"""Redis live counters: today's absolute figures per merchant, read back from PostgreSQL.

Redis is never incremented: after committed batches the consumer reads the day's totals of the
merchants they touched (and of the whole platform) from ``txn_hourly_agg`` and writes them
whole, so Redis cannot drift from the database however often a batch is retried or replayed.

Freshness: while batches keep coming, a refresh starts at most every ``consumer.live_interval``
after the previous one started: ``LIVE_REFRESH_SECONDS`` (0.5 s), or ``LIVE_REFRESH_BUSY_FACTOR``
(4) times as long as the previous refresh took when that is longer, never more than
``LIVE_REFRESH_MAX_SECONDS`` (5 s); when the consumer is idle, at once. So a hash trails
PostgreSQL by at most that interval plus one batch and one refresh (0.5 s plus one batch unless
a refresh takes over 125 ms, as with thousands of merchants per refresh), and, unless one takes
over 1.25 s, refreshes take at most a quarter of the time while a backlog drains
(docs/decisions/025-live-refresh-adaptive.md).

Cost: PostgreSQL writes each hash's fields (``core.live.read_hashes``, which the API's reader
decodes too), as one JSON document per ``WRITE_CHUNK`` merchants, and one
script call per document sets its hashes; the consumer handles a few strings per refresh, not a
record and a command per merchant.

One hash per merchant per UTC day, ``core.cache.live_key`` (``live:merchant:<id>:<day>``, the
platform's ``live:platform:<day>``), with the fields ``core.live`` reads from PostgreSQL.

Two consumers may finish batches in either order; the script keeps, hash by hash, the write
whose ``tx_count`` is not lower than what Redis holds (counts only grow within a day), so an
older read never overwrites a newer one. Only a hash of the same ``owner`` is compared: one of
another owner (a platform hash left under the old key ``live:merchant:_all:<day>``) is replaced.

Redis may lose its data (FLUSHDB, as the runbook's "incorrect data" procedure does; a restart
without persistence) or be away for a while. Both leave hashes behind PostgreSQL for merchants
that have no new event to rewrite them, so after either every merchant with transactions today
is rewritten (``rebuild``): a loss shows as the missing ``LIVE_EPOCH_KEY``, which is set after
each rebuild and checked with every refresh, and by ``watch`` every ``CHECK_SECONDS`` while no
batch comes. Errors while Redis is away are reported by one ``core.faults.Outage``: a line per
interval with a count, not one per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

import asyncpg
from redis.asyncio import Redis

from molam_workloads.core.cache import LIVE_EPOCH_KEY, live_key
from molam_workloads.core.faults import REDIS_DOWN, Outage
from molam_workloads.core.live import read_hashes

log = logging.getLogger(__name__)

# How often ``watch`` looks for a loss while no batch comes: an idle consumer restores the
# counters within this after Redis is flushed or comes back.
CHECK_SECONDS = 5.0
# Hashes per script call: one call per this many merchants, not one each, and short enough
# (~2 ms of Redis at ~8.5 us a hash, docs/benchmarks.md) that readers barely wait behind it.
WRITE_CHUNK = 200
# A rebuild writes this many script calls per round trip.
REBUILD_CALLS = 5

_MERCHANTS_TODAY = (
    "SELECT DISTINCT merchant_id FROM txn_hourly_agg"
    " WHERE hour >= $1 AND hour < $2 AND merchant_id IS NOT NULL"
)

# KEYS: the hashes; ARGV[1]: ttl seconds; ARGV[2]: a JSON array with one
# [tx_count, owner, [field, value, ...]] per key, in KEYS' order (``core.live.read_hashes``).
# Each hash is replaced unless it holds a higher tx_count of the same owner; returns how many were.
# One call touches many keys: fine on the single Redis core.cache connects to (a Redis Cluster
# would need them in one hash slot).
_SET_IF_NOT_OLDER = """
local rows = cjson.decode(ARGV[2])
local set = 0
for i, key in ipairs(KEYS) do
  local new = rows[i]
  local held = redis.call('HMGET', key, 'tx_count', 'owner')
  if not (held[1] and held[2] == new[2] and tonumber(held[1]) > tonumber(new[1])) then
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(new[3]))
    redis.call('EXPIRE', key, ARGV[1])
    set = set + 1
  end
end
return set
"""

# KEYS[1]: the rebuild's token key, KEYS[2]: LIVE_EPOCH_KEY; ARGV[1]: the token, ARGV[2]: now.
_MARK_COMPLETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""
_REBUILDING_KEY = "live:rebuilding"


class LiveCounters:
    def __init__(
        self, redis: Redis, reporting_currency: str, ttl_seconds: int, component: str = "consume"
    ) -> None:
        self._redis = redis
        self._reporting = reporting_currency
        self._ttl = ttl_seconds
        self._script = redis.register_script(_SET_IF_NOT_OLDER)
        self._mark = redis.register_script(_MARK_COMPLETE)
        self.outage = Outage(component, "redis", log)
        # True from a failed write until a rebuild succeeds: what Redis holds may be behind.
        self._behind = False
        self.rebuilds = 0  # rebuilds done (a test and the log read it)
        self._tried_at = 0.0  # time.monotonic() of the last refresh that went to Redis

    async def refresh(
        self, pool: asyncpg.Pool, merchants: Iterable[str | None], now: datetime | None = None
    ) -> int:
        """Rewrite today's hashes of ``merchants``; returns how many were set.

        ``merchants``: those with transactions counted today (``aggregation.merchants_on``); the
        platform's hash (``None``) is rewritten whenever any is. When Redis lost its data, or a
        write failed since the last rebuild, every merchant's hash is rewritten instead. While
        Redis is away nothing is written and 0 returned (the wait is logged by ``outage``);
        it is tried again with the capped backoff, by a PING before any PostgreSQL read, and
        the first refresh after it answers rebuilds everything.
        """
        now = now or datetime.now(UTC)
        today = now.date()
        touched = set(merchants)
        if not touched and not self._behind:
            return 0
        if self.outage.waiting and time.monotonic() - self._tried_at < self.outage.delay():
            return 0  # Redis away: not every batch pays for a timeout or a full-day read
        self._tried_at = time.monotonic()
        try:
            if self._behind:
                if self.outage.waiting:
                    await self._redis.ping()  # type: ignore[misc]  # redis-py: sync|async
                return await self._rebuild(pool, now)
            async with pool.acquire() as conn:
                chunks = await read_hashes(
                    conn,
                    today,
                    (m for m in touched if m is not None),
                    self._reporting,
                    now,
                    WRITE_CHUNK,
                )
            if not await self.write(today, chunks):
                return await self._rebuild(pool, now)
        except REDIS_DOWN as exc:
            self._redis_failed(exc)
            return 0
        self.outage.recovered()
        return sum(len(owners) for owners, _ in chunks)

    async def check(self, pool: asyncpg.Pool, now: datetime | None = None) -> int | None:
        """Rebuild every hash of today if Redis lost them or a write failed; how many were
        rewritten (None: nothing was lost, or Redis is still away)."""
        try:
            if self.outage.waiting:
                await self._redis.ping()  # type: ignore[misc]  # before any PostgreSQL read
            if not self._behind and await self._redis.exists(LIVE_EPOCH_KEY):
                self.outage.recovered()
                return None
            return await self._rebuild(pool, now or datetime.now(UTC))
        except REDIS_DOWN as exc:
            self._redis_failed(exc)
            return None

    async def watch(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """``check`` every ``CHECK_SECONDS`` until ``stop`` is set (the consumer's idle side:
        with no batch coming, nothing else would notice a flushed Redis)."""
        while not stop.is_set():
            try:
                await self.check(pool)
            except Exception:
                # Best effort, like every live-counter write: it must never stop ingestion
                # (PostgreSQL errors included: the consumer's own writes report those).
                log.warning("live counters: check failed, tried again shortly", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_SECONDS)

    def _redis_failed(self, exc: BaseException) -> None:
        self._behind = True
        self.outage.failed(exc, "live counters")

    async def _rebuild(self, pool: asyncpg.Pool, now: datetime) -> int:
        """Rewrite today's hash of every merchant with transactions today (and the platform's),
        then mark Redis as complete; how many hashes were written."""
        today = now.date()
        start = datetime.combine(today, clock_time(), tzinfo=UTC)
        async with pool.acquire() as conn:
            rows = await conn.fetch(_MERCHANTS_TODAY, start, start + timedelta(days=1))
            chunks = await read_hashes(
                conn, today, [r[0] for r in rows], self._reporting, now, WRITE_CHUNK
            )
        written = sum(len(owners) for owners, _ in chunks)
        # The mark is set only if the token written before the first hash is still there: a
        # flush in the middle of the rebuild leaves no mark, and the next check rebuilds again.
        token = uuid.uuid4().hex
        await self._redis.set(_REBUILDING_KEY, token, ex=600)
        for i in range(0, len(chunks), REBUILD_CALLS):
            await self.write(today, chunks[i : i + REBUILD_CALLS])
        if not await self._mark(
            keys=[_REBUILDING_KEY, LIVE_EPOCH_KEY], args=[token, now.isoformat()]
        ):
            log.warning("live counters: Redis lost its data again during the rebuild")
            return written  # still behind: the next refresh or check rebuilds again
        self._behind = False
        self.rebuilds += 1
        came_back = self.outage.recovered()
        log.info(
            "live counters: rebuilt today's %d hash(es) from PostgreSQL (%s)",
            written,
            "Redis came back" if came_back else "Redis had lost them",
        )
        return written

    async def write(self, day: date, chunks: list[tuple[list[str | None], str]]) -> bool:
        """Set the hashes of ``chunks`` (``core.live.read_hashes``), one script call per chunk;
        False when Redis had lost its data (no ``LIVE_EPOCH_KEY``: the caller rebuilds every
        hash, not only these)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(LIVE_EPOCH_KEY)
            for owners, doc in chunks:
                keys = [live_key(owner, day) for owner in owners]
                await self._script(keys=keys, args=[self._ttl, doc], client=pipe)
            results = await pipe.execute()
        return bool(results[0])
