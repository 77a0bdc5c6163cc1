"""SIRA end to end against real PostgreSQL, Redis and the broker: injected spikes and drops
are stored, logged, counted and published once — across replays, a crash between insert and
publish, and two consumers calling at the same time."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from helpers.ingest import Stack, publish, wait_until
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from molam_workloads.core.db import create_pool
from molam_workloads.core.events import TransactionEvent, encode_event
from molam_workloads.core.kafka import producer as kafka_producer
from molam_workloads.core.settings import SiraSettings, load_settings
from molam_workloads.ingest.consumer import Ingestor
from molam_workloads.ingest.settings import IngestSettings
from molam_workloads.ingest.sira import KNOWN, POINTER, AnomalyDetector, baseline_key

S = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
B = timedelta(minutes=15)
N_BUCKETS = 60
SPIKE, DROP = 40, 50  # M-1 quadruples in bucket 40; M-2 goes silent in bucket 50


async def _seed(conn: asyncpg.Connection) -> None:
    rnd = random.Random(5)
    rows = []
    for k in range((N_BUCKETS + 3) * 15):  # judged up to N_BUCKETS + 1
        minute = S + timedelta(minutes=k)
        bucket = k // 15
        m1 = rnd.randint(9, 11) * (4 if bucket == SPIKE else 1)
        rows.append((minute, "M-1", "SN", "XOF", m1, Decimal(m1 * 1000)))
        if bucket != DROP:
            m2 = rnd.randint(5, 7)
            rows.append((minute, "M-2", "FR", "EUR", m2, Decimal(m2 * 50)))
        rows.append((minute, None, "SN", "XOF", 2, Decimal(3000)))  # wallet transfers
    await conn.executemany(
        "INSERT INTO txn_minute_agg (minute, merchant_id, country, currency, channel, "
        "tx_count, gross_volume_local) VALUES ($1, $2, $3, $4, 'mobile_money', $5, $6)",
        rows,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    async with kafka_producer(kafka_bootstrap) as p:
        yield p


async def read_all(bootstrap: str, topic: str, settle: float = 1.0) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[dict[str, object]] = []
    try:
        idle = 0.0
        while idle < settle:
            batch = await consumer.getmany(timeout_ms=200)
            got = [json.loads(r.value) for recs in batch.values() for r in recs]
            out.extend(got)
            idle = 0.0 if got else idle + 0.2
    finally:
        await consumer.stop()
    return out


def _anomaly_count() -> float:
    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "analytics_anomalies"
        for s in m.samples
        if s.name == "analytics_anomalies_total"
    )


async def test_injected_spike_and_drop_published_once(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    redis: Redis,
    producer: AIOKafkaProducer,
    kafka_bootstrap: str,
    create_topic: Callable[..., Awaitable[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="molam_workloads.ingest.sira")
    topic = await create_topic("anomaly")
    await _seed(db)
    settings = SiraSettings(
        sira_bucket_minutes=15, sira_min_history=8, sira_seasonal=False, sira_grace_seconds=60
    )
    clock = {"now": S}
    detectors = [
        AnomalyDetector(settings, pool, redis, producer, topic, clock=lambda: clock["now"])
        for _ in range(2)  # two consumers of one group, called at the same moments
    ]
    counted_before = _anomaly_count()

    async def at_bucket(k: int) -> None:
        """Both consumers' batches just after bucket k closed."""
        clock["now"] = S + (k + 1) * B + timedelta(seconds=61)
        await asyncio.gather(*(d.on_batch({"M-1", "M-2", None}, clock["now"]) for d in detectors))

    await redis.sadd(KNOWN, "M-gone")  # type: ignore[misc]  # seen once, baseline expired
    await at_bucket(19)  # first call: learns buckets 0-19, judges nothing
    assert await redis.smembers(KNOWN) == {"M-1", "M-2"}  # type: ignore[misc]
    assert await db.fetchval("SELECT count(*) FROM analytics_anomalies") == 0
    assert await redis.hget(baseline_key("M-1", "tx_count"), "o")
    for k in range(20, N_BUCKETS):
        await at_bucket(k)

    rows = await db.fetch("SELECT * FROM analytics_anomalies ORDER BY merchant_id, metric")
    found = {(r["merchant_id"], r["metric"], r["bucket"], r["direction"]) for r in rows}
    spike, drop = S + SPIKE * B, S + DROP * B
    expected = {
        ("M-1", "tx_count", spike, "spike"),
        ("M-1", "volume", spike, "spike"),
        (None, "tx_count", spike, "spike"),
        ("M-2", "tx_count", drop, "drop"),
        ("M-2", "volume", drop, "drop"),
        (None, "tx_count", drop, "drop"),
        (None, "volume", drop, "drop"),
    }
    assert expected <= found, found
    assert {b for _, _, b, _ in found} == {spike, drop}, found  # no false alarm elsewhere
    assert all(r["published_at"] is not None for r in rows)
    m1 = next(r for r in rows if r["merchant_id"] == "M-1" and r["metric"] == "tx_count")
    assert m1["value"] >= 4 * 9 * 15 and 9 * 15 <= m1["baseline"] <= 11 * 15
    assert m1["zscore"] > 3 and m1["anomaly_key"] == f"M-1|tx_count|{spike.isoformat()}"

    messages = await read_all(kafka_bootstrap, topic)
    assert len(messages) == len(rows)  # once each, though two detectors ran every call
    msg = next(m for m in messages if m["merchant_id"] == "M-1" and m["metric"] == "tx_count")
    assert msg["bucket"] == "2026-03-02T10:00:00Z" and msg["direction"] == "spike"
    assert set(msg) >= {
        "merchant_id",
        "metric",
        "bucket",
        "value",
        "baseline",
        "zscore",
        "direction",
        "detected_at",
    }
    assert Decimal(str(msg["value"])) == m1["value"] and isinstance(msg["zscore"], float)
    logged = [r.getMessage() for r in caplog.records if "Anomaly detected" in r.getMessage()]
    assert len(logged) == len(rows)
    assert _anomaly_count() - counted_before == len(rows)

    # Replay: the consumer goes back before the spike and sees the same buckets again.
    await redis.set(POINTER, str((S + (SPIKE - 1) * B).timestamp()))
    for k in range(SPIKE, N_BUCKETS):
        await at_bucket(k)
    assert await db.fetchval("SELECT count(*) FROM analytics_anomalies") == len(rows)
    # A crash between insert and publish: the row is there, unpublished.
    await db.execute(
        "INSERT INTO analytics_anomalies (anomaly_key, merchant_id, metric, bucket, value, "
        "baseline, zscore, direction) VALUES ('crashed', 'M-3', 'tx_count', $1, 50, 10, 9.5, "
        "'spike')",
        S,
    )
    await at_bucket(N_BUCKETS)  # the next call publishes it
    await at_bucket(N_BUCKETS + 1)
    messages = await read_all(kafka_bootstrap, topic)
    assert len(messages) == len(rows) + 1
    assert [m["anomaly_key"] for m in messages].count("crashed") == 1
    assert _anomaly_count() - counted_before == len(rows)


async def test_disabled_and_old_buckets(
    pool: asyncpg.Pool, redis: Redis, producer: AIOKafkaProducer, db: asyncpg.Connection
) -> None:
    off = SiraSettings(sira_enabled=False)
    d = AnomalyDetector(off, pool, redis, producer, "unused", clock=lambda: S)
    await d.on_batch({"M-1"}, S)
    assert await redis.get(POINTER) is None
    # A replay of events older than the minute data's horizon judges nothing.
    on = SiraSettings(sira_horizon_hours=48)
    now = S + timedelta(days=10)
    d = AnomalyDetector(on, pool, redis, producer, "unused", clock=lambda: now)
    await d.on_batch({"M-1"}, S + timedelta(hours=3))
    assert await db.fetchval("SELECT count(*) FROM analytics_anomalies") == 0
    # An event time in the future closes nothing beyond the wall clock.
    assert d.newest_closed(now + timedelta(days=1)) < now


def _events(merchant: str, start: datetime, minutes: int, per_minute: int, tag: str) -> list[bytes]:
    out = []
    for k in range(minutes):
        for j in range(per_minute):
            out.append(
                encode_event(
                    TransactionEvent(
                        event_id=f"{tag}-{k}-{j}",
                        txn_id=f"{tag}-{k}-{j}",
                        merchant_id=merchant,
                        occurred_at=start + timedelta(minutes=k, seconds=j),
                        amount=Decimal("1000.00"),
                        currency="XOF",
                        country="SN",
                        channel="mobile_money",
                        type="payment",
                        status="succeeded",
                    )
                )
            )
    return out


async def test_through_the_consumer(
    stack: Stack,
    db: asyncpg.Connection,
    redis: Redis,
    create_topic: Callable[..., Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real consumer calls the detector after its batches: history is learnt, then a
    spike in the next bucket is stored and published once."""
    anomaly_topic = await create_topic("anomaly")
    for k, v in {
        "SIRA_ENABLED": "true",
        "SIRA_BUCKET_MINUTES": "5",
        "SIRA_MIN_HISTORY": "6",
        "SIRA_GRACE_SECONDS": "0",
        "SIRA_SEASONAL": "false",
        "ANOMALY_TOPIC": anomaly_topic,
    }.items():
        monkeypatch.setenv(k, v)
    settings = load_settings(IngestSettings)
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5 + 60)
    history = _events("M-1", start, 50, 4, "h")  # ten 5-minute buckets of 20
    spike = _events("M-1", start + timedelta(minutes=50), 5, 20, "s")  # one bucket of 100
    after = _events("M-1", start + timedelta(minutes=55), 1, 1, "a")  # closes the spike bucket

    async with create_pool(settings, max_size=3) as pool, kafka_producer(stack.bootstrap) as prod:
        detector = AnomalyDetector(settings, pool, redis, prod)
        ingestor = Ingestor(settings, pool, prod, None, detector)
        stop = asyncio.Event()
        task = asyncio.create_task(ingestor.run(stop))
        try:
            await publish(stack.bootstrap, stack.topic, history)
            await wait_until(lambda: _counted(db, len(history)))
            await wait_until(lambda: _has_pointer(redis))
            await publish(stack.bootstrap, stack.topic, spike + after)
            await wait_until(lambda: _counted(db, len(history) + len(spike) + len(after)))
            await wait_until(lambda: _published(db, 2))
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    rows = await db.fetch("SELECT merchant_id, metric, bucket FROM analytics_anomalies")
    bucket = start + timedelta(minutes=50)
    assert {(r["merchant_id"], r["metric"], r["bucket"]) for r in rows} >= {
        ("M-1", "tx_count", bucket),
        ("M-1", "volume", bucket),
    }
    assert {r["bucket"] for r in rows} == {bucket}
    messages = await read_all(stack.bootstrap, anomaly_topic)
    assert len(messages) == len(rows)


async def _counted(db: asyncpg.Connection, n: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM ingested_transactions") >= n)


async def _has_pointer(redis: Redis) -> bool:
    return bool(await redis.get(POINTER))


async def _published(db: asyncpg.Connection, n: int) -> bool:
    return bool(
        await db.fetchval("SELECT count(*) FROM analytics_anomalies WHERE published_at IS NOT NULL")
        >= n
    )
