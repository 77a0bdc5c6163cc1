"""``molam-analytics consume`` as a real process through faults of the services it uses, each an
instance of the test's own: PostgreSQL restarted, down for 60 s and read-only; the broker
unreachable for 30 s; the broker's log lost. Nothing lost, nothing counted twice, and /health
says what the consumer waits for or what it found."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers.broker import OwnedBroker, owned_broker
from helpers.ingest import (
    Stack,
    assert_totals_match_source,
    counted,
    insert_source,
    make_events,
    publish,
    wait_until,
)
from helpers.services import OwnedPostgres, free_port, owned_postgres

from molam_workloads.core.db import migrate
from molam_workloads.core.events import encode_event

CLI = str(Path(sys.executable).with_name("molam-analytics"))
# A service down this long must be waited out, not a reason to exit (issue 13).
POSTGRES_DOWN_SECONDS = 60
BROKER_DOWN_SECONDS = 30


class Consumer:
    """The CLI consumer in a subprocess, its /health on a port of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = os.environ | env | {"METRICS_PORT": str(self.port)}
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                CLI, "consume", env=self.env, stdout=out, stderr=out
            )

    def _get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=3) as r:
            return str(r.read().decode())

    async def health(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await asyncio.to_thread(self._get, "/health"))
        return doc

    async def metric(self, line_start: str) -> float:
        text = await asyncio.to_thread(self._get, "/metrics")
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def waiting_for(self, service: str) -> bool:
        try:
            return service in (await self.health())["waiting_for"]
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def own_db() -> AsyncIterator[tuple[OwnedPostgres, str]]:
    """A PostgreSQL of the test's own with a migrated database; (the cluster, its URL)."""
    async with owned_postgres() as pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute("CREATE DATABASE analytics")
        finally:
            await conn.close()
        url = pg.url("analytics")
        await migrate(url)
        yield pg, url


async def _offsets_total(url: str, topic: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1",
                topic,
            )
        )
    finally:
        await conn.close()


async def _counted_at(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await counted(conn)
    finally:
        await conn.close()


async def _assert_exact(url: str, n: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        assert await counted(conn) == n
        assert await conn.fetchval("SELECT count(*) FROM ingested_transactions") == n
        await assert_totals_match_source(conn)
    finally:
        await conn.close()


async def _consumed(url: str, topic: str, n: int, timeout: float) -> None:
    async def done() -> bool:
        return await _offsets_total(url, topic) >= n

    await wait_until(done, timeout)


@pytest.mark.timeout(400)
async def test_postgres_restart_down_60s_and_read_only_lose_and_double_nothing(
    stack: Stack, own_db: tuple[OwnedPostgres, str], tmp_path: Path
) -> None:
    pg, url = own_db
    events = make_events(1200, seed=71)
    conn = await asyncpg.connect(url)
    try:
        await insert_source(conn, events)
    finally:
        await conn.close()
    values = [encode_event(e) for e in events]
    # Copies of earlier events in every part: the ledger must still count each once.
    parts = [
        values[:300],
        values[300:600] + values[:50],
        values[600:900],
        values[900:] + values[600:650],
    ]
    sent = 0
    consumer = Consumer(
        stack.env | {"DATABASE_URL": url, "INGEST_BATCH_MAX_RECORDS": "50"}, tmp_path / "c.log"
    )
    await consumer.start()
    try:
        await publish(stack.bootstrap, stack.topic, parts[0])
        sent += len(parts[0])
        await _consumed(url, stack.topic, sent, 60)

        # 1. Down for 60 s while events arrive: the consumer waits, says so, and stays up.
        await pg.stop()
        down_at = time.monotonic()
        await publish(stack.bootstrap, stack.topic, parts[1])
        sent += len(parts[1])
        await wait_until(lambda: consumer.waiting_for("postgresql"), 30)
        gauge = 'analytics_waiting_for{component="consume",service="postgresql"}'
        assert await consumer.metric(gauge) == 1.0
        await asyncio.sleep(max(0.0, POSTGRES_DOWN_SECONDS - (time.monotonic() - down_at)))
        assert consumer.alive(), consumer.tail()
        assert (await consumer.health())["status"] == "waiting"
        await pg.start()
        await _consumed(url, stack.topic, sent, 60)
        await wait_until(lambda: _not(consumer.waiting_for("postgresql")), 20)
        assert await consumer.metric(gauge) == 0.0

        # 2. Read-only (as a standby promoted away, or a disk-full guard): waited out too.
        await _set_read_only(pg, True)
        await publish(stack.bootstrap, stack.topic, parts[2])
        sent += len(parts[2])
        await wait_until(lambda: consumer.waiting_for("postgresql"), 30)
        assert await _offsets_total(url, stack.topic) < sent
        await _set_read_only(pg, False)
        await _consumed(url, stack.topic, sent, 60)

        # 3. A restart while a backlog is being written.
        await publish(stack.bootstrap, stack.topic, parts[3])
        sent += len(parts[3])
        await pg.restart()
        await _consumed(url, stack.topic, sent, 60)
        assert consumer.alive(), consumer.tail()
    finally:
        code = await consumer.stop()
    assert code == 0, consumer.tail()
    await _assert_exact(url, len(events))
    log = consumer.log.read_text()
    assert "waiting for postgresql" in log and "postgresql is back after" in log
    # One line per interval, not one per attempt: a 60 s outage is a handful of lines.
    assert log.count("still waiting for postgresql") <= 4, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


async def _not(check: Any) -> bool:
    return not await check


async def _set_read_only(pg: OwnedPostgres, on: bool) -> None:
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute("SET default_transaction_read_only = off")
        await conn.execute(
            f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}"
        )
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture
async def broker() -> AsyncIterator[OwnedBroker]:
    async with owned_broker() as b:
        yield b


def _broker_env(stack: Stack, broker: OwnedBroker, topic: str, **more: str) -> dict[str, str]:
    return (
        stack.env
        | {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_TOPIC": topic,
            "DLQ_TOPIC": f"{topic}.dlq",
            "KAFKA_CONSUMER_GROUP": f"g-{uuid.uuid4().hex[:8]}",
        }
        | more
    )


@pytest.mark.timeout(300)
async def test_broker_unreachable_30s_is_waited_out(
    stack: Stack, database_url: str, broker: OwnedBroker, tmp_path: Path
) -> None:
    topic = f"wallet.{uuid.uuid4().hex[:8]}"
    await broker.create_topic(topic, 2)
    await broker.create_topic(f"{topic}.dlq")
    events = make_events(600, seed=72)
    conn = await asyncpg.connect(database_url)
    try:
        await insert_source(conn, events)
    finally:
        await conn.close()
    values = [encode_event(e) for e in events]
    consumer = Consumer(_broker_env(stack, broker, topic), tmp_path / "c.log")
    await consumer.start()
    try:
        await publish(broker.bootstrap, topic, values[:300])
        await _consumed(database_url, topic, 300, 60)
        await broker.unreachable()
        down_at = time.monotonic()
        await wait_until(lambda: consumer.waiting_for("kafka"), 25)
        await asyncio.sleep(max(0.0, BROKER_DOWN_SECONDS - (time.monotonic() - down_at)))
        assert consumer.alive(), consumer.tail()
        await broker.reachable()
        await publish(broker.bootstrap, topic, values[300:] + values[:40])
        await _consumed(database_url, topic, 640, 90)
        await wait_until(lambda: _not(consumer.waiting_for("kafka")), 30)
    finally:
        code = await consumer.stop()
    assert code == 0, consumer.tail()
    await _assert_exact(database_url, len(events))
    assert "waiting for kafka" in consumer.log.read_text()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["reset", "stop"])
async def test_broker_log_loss_is_never_a_silent_skip(
    stack: Stack, database_url: str, broker: OwnedBroker, tmp_path: Path, policy: str
) -> None:
    topic = f"wallet.{uuid.uuid4().hex[:8]}"
    await broker.create_topic(topic)
    await broker.create_topic(f"{topic}.dlq")
    before, after = make_events(300, seed=73), make_events(120, seed=74, prefix="N")
    conn = await asyncpg.connect(database_url)
    try:
        await insert_source(conn, before + after)
    finally:
        await conn.close()
    env = _broker_env(stack, broker, topic, INGEST_OFFSET_LOSS_POLICY=policy)
    consumer = Consumer(env, tmp_path / "c.log")
    await consumer.start()
    try:
        await publish(broker.bootstrap, topic, [encode_event(e) for e in before])
        await _consumed(database_url, topic, 300, 60)
        # The log is lost (memory broker restarted; on Kafka: the topic re-created): the new
        # log's 120 records sit at offsets 0..119, all below the stored offset 300.
        await broker.lose_log()
        await broker.create_topic(topic)
        await broker.create_topic(f"{topic}.dlq")
        await publish(broker.bootstrap, topic, [encode_event(e) for e in after])
        if policy == "stop":
            assert consumer.proc is not None
            code = await asyncio.wait_for(consumer.proc.wait(), 90)
            assert code == 4, consumer.tail()
            lines = [ln for ln in consumer.log.read_text().splitlines() if "error:" in ln]
            assert lines and lines[-1].startswith("molam-analytics consume: error: ")
            assert "past the log end" in lines[-1]
            assert await _counted_at(database_url) == len(before)  # nothing skipped silently
            return

        async def all_counted() -> bool:
            return await _counted_at(database_url) == len(before) + len(after)

        await wait_until(all_counted, 90)
        health = await consumer.health()
        assert health["status"] == "offsets_lost"
        (loss,) = health["offset_loss"]
        assert (loss["kind"], loss["stored"], loss["log_start"]) == ("past_end", 300, 0)
        loss_metric = 'analytics_ingest_offset_loss_total{kind="past_end"}'
        assert await consumer.metric(loss_metric) == 1.0
        assert await _offsets_total(database_url, topic) == len(after)
    finally:
        if consumer.alive():
            code = await consumer.stop()
            assert code == 0, consumer.tail()
    await _assert_exact(database_url, len(before) + len(after))
    assert "offsets lost:" in consumer.log.read_text()
