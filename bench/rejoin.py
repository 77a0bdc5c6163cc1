"""bench/rejoin: how long ingestion stalls when ``consume`` is SIGKILLed and restarted at once.

A producer publishes a steady stream; one ``molam-analytics consume`` process consumes it; it is
killed with SIGKILL and started again straight away (as a container restarted in its pod), and
the stall is the time from the kill until PostgreSQL's stored offsets move again. Variants:
the old defaults (30 s session timeout, dynamic membership), static membership (``POD_NAME`` as
``group.instance.id``), a 10 s session timeout, and both. docs/decisions/023-static-membership.md
holds the figures.

Run: ``set -a; . .stack/env; set +a; .venv/bin/python bench/rejoin.py [CRASHES [VARIANT...]]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env, scratch_database, scratch_topics, table

from molam_workloads.core.events import TransactionEvent, encode_event

CLI = str(Path(sys.executable).with_name("molam-analytics"))
RATE = 200  # events/s published while measuring
STALL_LIMIT = 120.0  # a variant whose consumer does not resume within this is reported as such

VARIANTS: dict[str, dict[str, str]] = {
    "defaults (session 30 s)": {},
    "static membership (POD_NAME)": {"POD_NAME": "rejoin-bench-0"},
    "session timeout 10 s": {"KAFKA_SESSION_TIMEOUT_MS": "10000"},
    "static membership + session 10 s": {
        "POD_NAME": "rejoin-bench-0",
        "KAFKA_SESSION_TIMEOUT_MS": "10000",
    },
}


async def _stored(db: asyncpg.Connection, topic: str) -> int:
    return int(
        await db.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1", topic
        )
    )


async def _produce(bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await prod.start()
    try:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            for _ in range(RATE // 10):
                n += 1
                await prod.send(topic, _event(n), key=str(n).encode())
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    finally:
        await prod.stop()


def _event(n: int) -> bytes:
    return encode_event(
        TransactionEvent(
            event_id=uuid.uuid4().hex, txn_id=f"R-{uuid.uuid4().hex}", merchant_id=f"M-{n % 20}",
            occurred_at=datetime.now(UTC), amount=Decimal(n % 5000) + Decimal("0.5"),
            currency="XOF", country="SN", channel="card", type="payment", status="succeeded",
            fee=Decimal("0.10"),
        )
    )  # fmt: skip


async def _resumed(db: asyncpg.Connection, topic: str, since: int, limit: float) -> float | None:
    """Seconds until the stored offsets pass ``since`` (None: not within ``limit``)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await _stored(db, topic) > since:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def _variant(name: str, extra: dict[str, str], crashes: int) -> list[float | None]:
    bootstrap = env("KAFKA_BOOTSTRAP_SERVERS")
    async with (
        scratch_database("bench_rejoin") as dsn,
        scratch_topics(bootstrap, ("rejoin", 2), ("rejoin-dlq", 1)) as (topic, dlq),
    ):
        topics = {"wallet": topic, "dlq": dlq}
        base = os.environ | {
            "DATABASE_URL": dsn,
            "KAFKA_TOPIC": topics["wallet"],
            "DLQ_TOPIC": topics["dlq"],
            "KAFKA_CONSUMER_GROUP": f"rejoin-{uuid.uuid4().hex[:8]}",
            "METRICS_PORT": "0",
            "SIRA_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
        }
        environ = base | extra
        stop = asyncio.Event()
        producing = asyncio.create_task(_produce(bootstrap, topics["wallet"], stop))
        db = await asyncpg.connect(dsn)
        stalls: list[float | None] = []
        proc = await asyncio.create_subprocess_exec(CLI, "consume", env=environ)
        try:
            await _resumed(db, topics["wallet"], 0, STALL_LIMIT)
            for _ in range(crashes):
                await asyncio.sleep(3)  # steady state first
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                # The stall starts at the kill: whatever was written before it is the mark.
                mark = await _stored(db, topics["wallet"])
                killed = time.monotonic()
                proc = await asyncio.create_subprocess_exec(CLI, "consume", env=environ)
                left = STALL_LIMIT - (time.monotonic() - killed)
                waited = await _resumed(db, topics["wallet"], mark, left)
                stalls.append(None if waited is None else time.monotonic() - killed)
                print(f"{name}: stall {stalls[-1]}", file=sys.stderr)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
            stop.set()
            await producing
            await db.close()
        return stalls


async def main() -> None:
    crashes = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = []
    only = sys.argv[2:]  # variant names to run (default: all)
    for name, extra in VARIANTS.items():
        if only and name not in only:
            continue
        stalls = await _variant(name, extra, crashes)
        shown = ", ".join("-" if s is None else f"{s:.1f}" for s in stalls)
        done = [s for s in stalls if s is not None]
        mean = f"{sum(done) / len(done):.1f}" if done else "-"
        rows.append([name, shown, mean])
    print(table(["variant", "stall per crash (s)", "mean (s)"], rows))


if __name__ == "__main__":
    asyncio.run(main())
