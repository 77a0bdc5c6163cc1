"""``molam-analytics consume`` as a real process, killed with SIGKILL mid-stream: totals exact."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

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
    wait_until,
    with_duplicates,
)
from redis.asyncio import Redis

CLI = str(Path(sys.executable).with_name("molam-analytics"))


async def _start(stack: Stack, log: Path) -> asyncio.subprocess.Process:
    env = (
        os.environ
        | stack.env
        | {
            # Small batches: many transactions, so a kill lands inside or between them.
            "INGEST_BATCH_MAX_RECORDS": "40",
            "KAFKA_SESSION_TIMEOUT_MS": "3000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        }
    )
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(CLI, "consume", env=env, stdout=out, stderr=out)


async def _ledger(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ingested_transactions"))


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_sigkill_mid_stream_then_restart_keeps_totals_exact(
    stack: Stack, db: asyncpg.Connection, redis: Redis, tmp_path: Path
) -> None:
    events = make_events(3000, seed=41)
    await insert_source(db, events)
    values = with_duplicates(events, 0.15, seed=42)
    await publish(stack.bootstrap, stack.topic, values[:2000])
    log = tmp_path / "consume.log"

    for kill_at in (300, 900, 1700):
        proc = await _start(stack, log)
        try:
            await wait_until(lambda n=kill_at: _at_least(db, n), 30, every=0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert await _ledger(db) < len(events)  # killed mid-stream, not after the end
        if kill_at == 900:
            # More traffic while nobody consumes.
            await publish(stack.bootstrap, stack.topic, values[2000:])

    proc = await _start(stack, log)
    try:
        await wait_until(lambda: _at_least(db, len(events)), 40)
        await wait_until(lambda: _consumed(db, stack.topic, len(values)), 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
    assert code == 0, log.read_text()[-3000:]

    assert await counted(db) == len(events)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)
    assert "consume: stopped cleanly" in log.read_text()


async def _at_least(db: asyncpg.Connection, n: int) -> bool:
    return await _ledger(db) >= n


async def _consumed(db: asyncpg.Connection, topic: str, n: int) -> bool:
    total = await db.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1", topic
    )
    return bool(total == n)


async def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    env = os.environ | {"DATABASE_URL": "mysql://nope"}
    proc = await asyncio.create_subprocess_exec(
        CLI, "consume", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().startswith("molam-analytics consume: error: bad configuration")
