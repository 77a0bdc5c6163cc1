"""The API against a redis-server the test owns, down for 30 s: summaries are answered uncached,
``/v1/live`` from PostgreSQL (the same figures), ``/health`` says Redis is down, the wait is
logged once per interval and shown in ``analytics_waiting_for``; once Redis is back (empty)
answers are cached again by themselves."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from helpers.services import OwnedRedis, owned_redis
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from molam_workloads.core.db import create_pool
from molam_workloads.core.faults import LOG_EVERY_SECONDS
from molam_workloads.core.settings import DatabaseSettings
from molam_workloads.ingest.live_counters import LiveCounters

from .conftest import api_settings, running_api
from .seed import hourly, insert_hourly

DOWN_SECONDS = 30
WAITING = {"component": "api", "service": "redis"}


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnedRedis]:
    async with owned_redis() as server:
        yield server


async def test_the_api_answers_through_30s_without_redis(
    database_url: str, db: asyncpg.Connection, own_redis: OwnedRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    await insert_hourly(db, [hourly(hour, "M-1", tx_count=7, succeeded_count=7)])
    client = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        async with create_pool(DatabaseSettings(database_url=database_url)) as pool:
            await LiveCounters(client, "USD", 3600).refresh(pool, ["M-1"], now)
    finally:
        await client.aclose()
    settings = api_settings(database_url, own_redis.url)
    with caplog.at_level(logging.INFO, logger="molam_workloads"):
        async with running_api(settings) as api:
            await api.get("/v1/kpis")
            assert (await api.get("/v1/kpis")).headers["x-cache"] == "hit"
            live = (await api.get("/v1/live", "merchant", "M-1")).json()
            assert live["source"] == "redis" and live["counters"]["tx_count"] == "7"

            await own_redis.stop()
            down_at = time.monotonic()
            requests = 0
            while time.monotonic() - down_at < DOWN_SECONDS:
                kpis = await api.get("/v1/kpis")
                assert kpis.status_code == 200 and kpis.headers["x-cache"] == "miss", kpis.text
                live = (await api.get("/v1/live", "merchant", "M-1")).json()
                assert live["source"] == "postgresql" and live["counters"]["tx_count"] == "7"
                requests += 2
                await asyncio.sleep(0.1)
            health = await api.client.get("/health")
            assert health.status_code == 503
            assert health.json()["checks"]["redis"] == {"status": "down"}
            assert REGISTRY.get_sample_value("analytics_waiting_for", WAITING) == 1

            await own_redis.start()  # back, empty
            deadline = time.monotonic() + 10
            while (await api.get("/v1/kpis")).headers["x-cache"] != "hit":
                assert time.monotonic() < deadline, "answers are not cached again"
                await asyncio.sleep(0.2)
            assert (await api.client.get("/health")).status_code == 200
            assert REGISTRY.get_sample_value("analytics_waiting_for", WAITING) == 0
    waits = [
        m for r in caplog.records if (m := r.getMessage()).startswith("api: ") and "redis" in m
    ]
    assert requests > 200
    # A line as the wait began, one per interval, one as it ended: not one per request.
    assert 2 <= len(waits) <= 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1, waits
    assert "redis is back after" in waits[-1]
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("molam_workloads")]
