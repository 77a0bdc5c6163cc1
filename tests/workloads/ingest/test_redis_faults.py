"""Redis faults, against a redis-server the test owns: flushed (the runbook's FLUSHDB), restarted
empty, and down for 30 s. Counting never stops, and afterwards the live counters of every
merchant with transactions today, new events or not, hold PostgreSQL's exact figures again;
the outage is logged once per interval with a count, never a traceback per batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from helpers.ingest import (
    Stack,
    assert_live_matches_db,
    assert_totals_match_source,
    counted,
    insert_source,
    make_events,
    publish,
    running_consumer,
    today_span,
    wait_until,
)
from helpers.services import OwnedRedis, owned_redis
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from molam_workloads.core.cache import LIVE_EPOCH_KEY, live_key
from molam_workloads.core.events import TransactionEvent, encode_event
from molam_workloads.core.faults import LOG_EVERY_SECONDS
from molam_workloads.core.settings import load_settings
from molam_workloads.ingest.live_counters import CHECK_SECONDS, LiveCounters
from molam_workloads.ingest.settings import IngestSettings
from molam_workloads.ingest.sira import POINTER, AnomalyDetector

MERCHANTS = 40
FEW = {f"M-{i}" for i in range(5)}  # the only merchants with events after the flush


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnedRedis]:
    async with owned_redis() as server:
        yield server


async def _live_exact(db: asyncpg.Connection, redis: Redis) -> bool:
    try:
        await assert_live_matches_db(db, redis)
    except AssertionError:
        return False
    return True


async def _counted_is(db: asyncpg.Connection, n: int) -> bool:
    return await counted(db) == n


def _events(n: int, seed: int, prefix: str) -> list[TransactionEvent]:
    return make_events(n, seed=seed, merchants=MERCHANTS, span=today_span(), prefix=prefix)


async def _watching(live: LiveCounters | None, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    assert live is not None
    await live.watch(pool, stop)


async def test_every_merchants_counters_come_back_after_a_flush_or_an_empty_restart(
    stack: Stack, db: asyncpg.Connection, own_redis: OwnedRedis
) -> None:
    first = _events(600, 71, "A")
    assert {e.merchant_id for e in first} >= {f"M-{i}" for i in range(MERCHANTS)}
    later = [e for e in _events(300, 72, "B") if e.merchant_id in FEW]
    await insert_source(db, first + later)
    client = Redis.from_url(own_redis.url, decode_responses=True)
    stop = asyncio.Event()
    try:
        async with running_consumer(redis_url=own_redis.url) as ingestor:
            watcher = asyncio.create_task(_watching(ingestor.live, ingestor.pool, stop))
            await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in first])
            await wait_until(lambda: _counted_is(db, len(first)))
            await wait_until(lambda: _live_exact(db, client))
            assert ingestor.live is not None
            rebuilds = ingestor.live.rebuilds

            # FLUSHALL, then new events for 5 merchants: the other 35 come back too.
            await client.flushall()
            await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in later])
            await wait_until(lambda: _counted_is(db, len(first) + len(later)))
            await wait_until(lambda: _live_exact(db, client), timeout=3 * CHECK_SECONDS)
            assert ingestor.live.rebuilds > rebuilds
            today = datetime.now(UTC).date()
            for m in {f"M-{i}" for i in range(MERCHANTS)} - FEW:
                assert await client.exists(live_key(m, today)), m

            # Restarted without persistence, and no event at all: the watcher rebuilds.
            await own_redis.restart()
            assert not await client.exists(LIVE_EPOCH_KEY)
            await wait_until(lambda: _live_exact(db, client), timeout=3 * CHECK_SECONDS)
            stop.set()
            await watcher
        await assert_totals_match_source(db)
    finally:
        stop.set()
        await client.aclose()


def _waits(caplog: pytest.LogCaptureFixture, component: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if f"{component}: " in r.getMessage() and "redis" in r.getMessage()
    ]


async def test_redis_down_for_30s_counting_goes_on_and_the_counters_come_back_exact(
    stack: Stack, db: asyncpg.Connection, own_redis: OwnedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    chunks = [_events(60, 80 + i, f"D{i}") for i in range(8)]
    await insert_source(db, [e for c in chunks for e in c])
    client = Redis.from_url(own_redis.url, decode_responses=True)
    stop = asyncio.Event()
    sent = 0
    try:
        async with running_consumer(redis_url=own_redis.url) as ingestor:
            watcher = asyncio.create_task(_watching(ingestor.live, ingestor.pool, stop))
            await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in chunks[0]])
            sent += len(chunks[0])
            await wait_until(lambda: _live_exact(db, client))

            await own_redis.stop()
            with caplog.at_level(logging.INFO, logger="molam_workloads"):
                started = asyncio.get_running_loop().time()
                for chunk in chunks[1:-1]:  # batches keep coming while Redis is away
                    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in chunk])
                    sent += len(chunk)
                    await wait_until(lambda: _counted_is(db, sent))  # noqa: B023
                    await asyncio.sleep(max(0.0, 30 / 6 - 0.5))
                await asyncio.sleep(max(0.0, 30 - (asyncio.get_running_loop().time() - started)))
                assert await _counted_is(db, sent)  # nothing waited for Redis
                assert ingestor.live is not None and ingestor.live.outage.waiting
                down = _waits(caplog, "consume")
                await own_redis.start()  # back, empty
                await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in chunks[-1]])
                sent += len(chunks[-1])
                await wait_until(lambda: _counted_is(db, sent))
                await wait_until(lambda: _live_exact(db, client), timeout=3 * CHECK_SECONDS)
            stop.set()
            await watcher
        await assert_totals_match_source(db)
    finally:
        stop.set()
        await client.aclose()
    # One line when the wait began, one per LOG_EVERY_SECONDS after it, one at the end; no
    # traceback.
    assert 1 <= len(down) <= 1 + 30 / LOG_EVERY_SECONDS + 1, [r.getMessage() for r in down]
    assert "waiting for redis" in down[0].getMessage()
    assert any("redis is back" in r.getMessage() for r in _waits(caplog, "consume"))
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_sira_waits_out_redis_with_one_line_per_interval(
    database_url: str, own_redis: OwnedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(IngestSettings).model_copy(
        update={"sira_enabled": True, "redis_url": own_redis.url}
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    client = Redis.from_url(own_redis.url, decode_responses=True)
    failures = REGISTRY.get_sample_value("analytics_sira_failures_total") or 0.0
    try:
        detector = AnomalyDetector(settings, pool, client, producer=None)  # type: ignore[arg-type]
        await own_redis.stop()
        with caplog.at_level(logging.INFO, logger="molam_workloads"):
            for _ in range(300):  # ~a batch every 0.1 s for 30 s, as in the outage measured
                await detector.on_batch({"M-1"}, datetime.now(UTC))
            assert REGISTRY.get_sample_value("analytics_waiting_for", {
                "component": "sira", "service": "redis"}) == 1  # fmt: skip
            await own_redis.start()
            await detector.on_batch({"M-1"}, datetime.now(UTC))
            pointer = await client.get(POINTER)
    finally:
        await client.aclose()
        await pool.close()
    lines = _waits(caplog, "sira")
    assert [r.getMessage().split(":")[1].strip()[:11] for r in lines] == [
        "waiting for",
        "redis is ba",
    ], [r.getMessage() for r in lines]
    assert "300 error(s)" in lines[-1].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    assert (REGISTRY.get_sample_value("analytics_sira_failures_total") or 0.0) - failures == 300
    assert (
        REGISTRY.get_sample_value(
            "analytics_waiting_for", {"component": "sira", "service": "redis"}
        )
        == 0
    )
    assert pointer is not None  # judging went on once Redis was back
