"""``molam-analytics alerts`` as a process against a broker the test owns, stopped for 30 s and
started again (empty, as a memory broker restarts) at the same address. The evaluator asks the
broker for the lag when no batch came for a while (the stale-ingestion check): while the broker
is away the lag is unknown, so the ingestion is not called stale and cycles go on; the wait is
logged once per interval and shown in ``analytics_waiting_for`` and ``/health``; once the broker
is back the lag is measured again by itself."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from helpers.alerts import alerts_health, alerts_process
from helpers.broker import OwnedBroker, owned_broker
from helpers.ingest import publish
from helpers.services import free_port, scrape

from molam_workloads.core.faults import BACKOFF_CAP, LOG_EVERY_SECONDS

from .conftest import add_rule, wait_for

DOWN_SECONDS = 30
WAITING = ("analytics_waiting_for", {"component": "alerts", "service": "kafka"})
TOPIC = "wallet"
RULE = "fail-rate"


@pytest.fixture
async def broker() -> AsyncIterator[OwnedBroker]:
    async with owned_broker() as owned:
        yield owned


async def _backlog(broker: OwnedBroker) -> None:
    """The topic created with 3 records the group has not read (lag 3)."""
    await broker.create_topic(TOPIC)
    # One record per batch (Tansu's end offsets, LOCAL-STACK.md).
    await publish(broker.bootstrap, TOPIC, [b"{}"] * 3, one_per_batch=True)


async def _no_data_reason(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn, timeout=2)
    try:
        value = await conn.fetchval(
            "SELECT s.no_data_reason FROM analytics_alert_rule_state s "
            "JOIN analytics_alert_rules r ON r.id = s.rule_id WHERE r.name = $1",
            RULE,
        )
    finally:
        await conn.close()
    return None if value is None else str(value)


async def _reason_is(dsn: str, reason: str) -> bool:
    return await _no_data_reason(dsn) == reason


async def _gauge_is(port: int, value: float) -> bool:
    return await scrape(port, *WAITING) == value


@pytest.mark.timeout(150)
async def test_the_evaluator_rides_through_30s_without_the_broker(
    database_url: str, broker: OwnedBroker, tmp_path: Path
) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await add_rule(
            conn, RULE, metric="failure_rate", comparison="gt", threshold=0.5, windowMinutes=10
        )
        # The group's last batch was stored 20 minutes ago: quiet, so the lag is asked.
        await conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset,"
            " updated_at) VALUES ($1, $2, 0, 0, now() - interval '20 minutes')",
            group,
            TOPIC,
        )
    finally:
        await conn.close()
    await _backlog(broker)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "METRICS_PORT": str(port),
        "METRICS_ADDRESS": "127.0.0.1",
        "ALERTS_INTERVAL_SECONDS": "1",
        "ALERTS_STALE_INGESTION_MINUTES": "10",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_TOPIC": TOPIC,
        "KAFKA_CONSUMER_GROUP": group,
        "ALERT_WEBHOOK_SECRET": "a-webhook-secret-for-the-test",
    }
    log_path = tmp_path / "alerts.log"
    async with alerts_process(env, log_path) as proc:
        # Quiet with lag 3: stale, so the rule has no data for that reason.
        await wait_for(lambda: _reason_is(database_url, "ingestion_stale"), 30)

        await broker.down()
        down_at = time.monotonic()
        await wait_for(lambda: _gauge_is(port, 1.0), 20)
        # The lag is unknown: not stale, and the rule is judged on its (empty) window.
        await wait_for(lambda: _reason_is(database_url, "no_denominator"), 10)
        await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
        assert proc.returncode is None, log_path.read_text()
        health = await alerts_health(port)
        assert health["status"] == "waiting", health
        assert health["waiting_for"]["kafka"]["seconds"] >= DOWN_SECONDS - 5

        await broker.up()  # empty: the topic and its backlog are made again
        await _backlog(broker)
        await wait_for(lambda: _reason_is(database_url, "ingestion_stale"), BACKOFF_CAP + 20)
        await wait_for(lambda: _gauge_is(port, 0.0), 10)
        assert await alerts_health(port) == {"status": "ok", "waiting_for": {}}
        assert proc.returncode is None
    log = log_path.read_text()
    waits = [line for line in log.splitlines() if "alerts: " in line and "kafka" in line]
    # A line as the wait began, one per interval, one as it ended; not one per cycle (~30).
    assert 2 <= len(waits) <= 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1, "\n".join(waits)
    assert "kafka is back after" in waits[-1], "\n".join(waits)
    # aiokafka's own line per failed connection (one a cycle, ~30) is folded the same way: the
    # first for an address, then one per interval (core.faults.QuietReconnects).
    noise = [line for line in log.splitlines() if " aiokafka " in line]
    assert len(noise) <= 3 * (DOWN_SECONDS / LOG_EVERY_SECONDS + 1), "\n".join(noise)
