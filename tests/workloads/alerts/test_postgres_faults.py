"""``molam-analytics alerts`` as a process against a PostgreSQL cluster the test owns: restarted,
then down for 60 s. The evaluator stays up, says what it waits for (log and
``analytics_waiting_for``) once per interval rather than once per attempt, and evaluates,
fires and notifies again by itself once PostgreSQL is back."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from helpers.alerts import alerts_health, alerts_process
from helpers.services import OwnedPostgres, free_port, owned_postgres, scrape

from molam_workloads.core.db import migrate
from molam_workloads.core.faults import BACKOFF_CAP, LOG_EVERY_SECONDS

from .conftest import MakeReceiver, add_minutes, add_rule, wait_for

DOWN_SECONDS = 60
WAITING = ("analytics_waiting_for", {"component": "alerts", "service": "postgresql"})


@pytest.fixture
async def pg() -> AsyncIterator[OwnedPostgres]:
    async with owned_postgres() as server:
        await migrate(server.dsn)
        yield server


async def _evaluated_after(dsn: str, since: datetime) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        last = await conn.fetchval("SELECT max(last_evaluated_at) FROM analytics_alert_rule_state")
    finally:
        await conn.close()
    return last is not None and last > since


async def test_the_evaluator_rides_through_a_restart_and_60s_down(
    pg: OwnedPostgres, receiver: MakeReceiver, tmp_path: Path
) -> None:
    hook = await receiver()
    conn = await asyncpg.connect(pg.dsn)
    try:
        await add_rule(
            conn, "fail-rate", metric="failure_rate", comparison="gt", threshold=0.5,
            windowMinutes=10, notify={"webhooks": [{"url": hook.url}]},
        )  # fmt: skip
    finally:
        await conn.close()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": pg.dsn,
        "METRICS_PORT": str(port),
        "METRICS_ADDRESS": "127.0.0.1",
        "ALERTS_INTERVAL_SECONDS": "1",
        "ALERT_WEBHOOK_ALLOW": "127.0.0.1",
        "ALERT_WEBHOOK_SECRET": "a-webhook-secret-for-the-test",
    }
    log_path = tmp_path / "alerts.log"
    async with alerts_process(env, log_path) as proc:
        await wait_for(lambda: _evaluated_after(pg.dsn, datetime(2000, 1, 1, tzinfo=UTC)), 20)

        restarted = datetime.now(UTC)
        await pg.restart()
        await wait_for(lambda: _evaluated_after(pg.dsn, restarted), 20)

        await pg.stop()
        down_at = time.monotonic()
        await wait_for(lambda: _is(port, 1.0), 20)  # says it is waiting
        await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))
        assert proc.returncode is None, log_path.read_text()
        assert await scrape(port, *WAITING) == 1.0
        health = await alerts_health(port)
        assert health["status"] == "waiting", health
        assert health["waiting_for"]["postgresql"]["seconds"] >= DOWN_SECONDS - 2
        back = datetime.now(UTC)
        await pg.start()
        # Evaluation resumes within the capped backoff, not after a restart by hand.
        await wait_for(lambda: _evaluated_after(pg.dsn, back), BACKOFF_CAP + 10)
        await wait_for(lambda: _is(port, 0.0), 10)
        assert await alerts_health(port) == {"status": "ok", "waiting_for": {}}

        # Everything works again: data that breaks the rule fires it and the webhook goes out.
        conn = await asyncpg.connect(pg.dsn)
        try:
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            await add_minutes(conn, now - timedelta(minutes=5), 5, succeeded=2, failed=8)
        finally:
            await conn.close()
        await wait_for(lambda: _received(hook), 20)
        assert proc.returncode is None
    log = log_path.read_text()
    waits = [line for line in log.splitlines() if "alerts: " in line and "postgresql" in line]
    # The restart, and the 60 s outage: a line as each began, one per interval, one as each
    # ended (the evaluator, notifier and pusher share it); not one per attempt.
    most = 2 * 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1
    assert 3 <= len(waits) <= most, "\n".join(waits)
    assert any("still waiting for postgresql" in line for line in waits), "\n".join(waits)
    assert any("postgresql is back after" in line for line in waits), "\n".join(waits)


async def _is(port: int, value: float) -> bool:
    return await scrape(port, *WAITING) == value


async def _received(hook: object) -> bool:
    return bool(getattr(hook, "received", None))
