"""Helpers of the ingestion and job tests: events, publishing, an in-process consumer, checks."""

from __future__ import annotations

import asyncio
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from redis.asyncio import Redis

from molam_workloads.core.cache import live_key
from molam_workloads.core.db import create_pool
from molam_workloads.core.events import TransactionEvent, encode_event
from molam_workloads.core.live import read_totals
from molam_workloads.core.settings import load_settings
from molam_workloads.ingest.consumer import Detector, Ingestor
from molam_workloads.ingest.live_counters import LiveCounters
from molam_workloads.ingest.settings import IngestSettings

# Short group timeouts: Tansu holds a join for about session_timeout / 2.
FAST_GROUP_ENV = {
    "KAFKA_SESSION_TIMEOUT_MS": "6000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "INGEST_POLL_TIMEOUT_MS": "200",
    "METRICS_PORT": "0",
    "SIRA_ENABLED": "false",
}

CHANNELS = ("mobile_money", "card", "bank_transfer", "wallet")
PLACES = (("XOF", "SN"), ("XOF", "CI"), ("GHS", "GH"), ("NGN", "NG"), ("KES", "KE"))


def today_span(at_most: timedelta = timedelta(minutes=1)) -> timedelta:
    """A span ending now that stays inside today's UTC day (``make_events`` counts back from
    one second ago): a test about today's counters must not find its events on yesterday's
    when it runs just after midnight UTC. Waits out the first seconds of a day."""
    now = datetime.now(UTC)
    since_midnight = now - now.replace(hour=0, minute=0, second=0, microsecond=0)
    if since_midnight < timedelta(seconds=3):
        time.sleep(3 - since_midnight.total_seconds())
        return today_span(at_most)
    return min(at_most, since_midnight - timedelta(seconds=2))


def make_events(
    n: int,
    *,
    seed: int = 1,
    merchants: int = 5,
    start: datetime | None = None,
    span: timedelta = timedelta(hours=6),
    prefix: str = "T",
) -> list[TransactionEvent]:
    """``n`` distinct, valid transactions spread over ``span`` before ``start`` (default now)."""
    rnd = random.Random(seed)
    end = start or datetime.now(UTC) - timedelta(seconds=1)
    out = []
    for i in range(n):
        currency, country = rnd.choice(PLACES)
        status = rnd.choices(["succeeded", "failed", "pending"], [85, 10, 5])[0]
        type_ = rnd.choices(["payment", "refund", "payout", "transfer"], [80, 8, 7, 5])[0]
        merchant = (
            None if type_ == "transfer" and rnd.random() < 0.5 else f"M-{rnd.randrange(merchants)}"
        )
        out.append(
            TransactionEvent(
                event_id=uuid.UUID(int=rnd.getrandbits(128)).hex,
                txn_id=f"{prefix}-{seed}-{i}",
                merchant_id=merchant,
                occurred_at=end - span * rnd.random(),
                amount=Decimal(rnd.randrange(100, 5_000_000)) / 100,
                currency=currency,
                country=country,
                channel=rnd.choice(CHANNELS),
                type=type_,
                status=status,
                fee=Decimal(rnd.randrange(0, 500)) / 100,
            )
        )
    return out


def with_duplicates(events: Sequence[TransactionEvent], rate: float, seed: int = 2) -> list[bytes]:
    """Wire values with ``rate`` of the events published again later (some far later)."""
    rnd = random.Random(seed)
    values = [encode_event(e) for e in events]
    dups = [v for v in values if rnd.random() < rate]
    for v in dups:
        values.insert(rnd.randrange(len(values) + 1), v)
    return values


async def publish(
    bootstrap: str, topic: str, values: Iterable[bytes | None], *, one_per_batch: bool = False
) -> None:
    """Publish raw values (round-robin over partitions by key)."""
    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        max_request_size=4 * 1024 * 1024,
        **({"max_batch_size": 1} if one_per_batch else {"linger_ms": 5}),
    )
    await prod.start()
    try:
        if one_per_batch:
            for i, v in enumerate(values):
                await prod.send_and_wait(topic, v, key=str(i).encode())
        else:
            futs = [await prod.send(topic, v, key=str(i).encode()) for i, v in enumerate(values)]
            await asyncio.gather(*futs)
    finally:
        await prod.stop()


async def publish_compressed(
    bootstrap: str, topic: str, values: Iterable[bytes | None], codec: str
) -> None:
    """Publish raw values in batches compressed with ``codec`` (gzip, snappy, lz4, zstd)."""
    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, compression_type=codec, linger_ms=20,
        max_request_size=4 * 1024 * 1024,
    )  # fmt: skip
    await prod.start()
    try:
        futs = [await prod.send(topic, v, key=str(i).encode()) for i, v in enumerate(values)]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


# The v2 record batch header: CRC-32C at byte 17 covers everything from byte 21 (attributes) on;
# the records (compressed as a whole when the batch is) start at byte 61.
_CRC_AT, _CRC_FROM, _RECORDS_AT = 17, 21, 61
_ATTRIBUTES_AT = 21  # int16, the codec in its low 3 bits


def unreadable_batch(values: Sequence[bytes], damage: str) -> bytes:
    """A record batch a consumer cannot unpack, as a broken producer could write it:
    ``garbage_gzip`` (flagged gzip, its payload not gzip, CRC right), ``bad_crc``, or
    ``unknown_codec`` (codec 5, which no client knows; brokers refuse it)."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=1 if damage == "garbage_gzip" else 0, is_transactional=0,
        producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for i, v in enumerate(values):
        builder.append(i, timestamp=None, key=None, value=v, headers=[])
    buf = bytearray(builder.build())
    if damage == "garbage_gzip":
        buf[_RECORDS_AT:] = b"A" * (len(buf) - _RECORDS_AT)
        struct.pack_into(">I", buf, _CRC_AT, calc_crc32c(bytes(buf[_CRC_FROM:])))
    elif damage == "bad_crc":
        buf[_CRC_AT] ^= 0xFF
    elif damage == "unknown_codec":
        buf[_ATTRIBUTES_AT + 1] = (buf[_ATTRIBUTES_AT + 1] & ~0x07) | 5
        struct.pack_into(">I", buf, _CRC_AT, calc_crc32c(bytes(buf[_CRC_FROM:])))
    else:
        raise ValueError(damage)
    return bytes(buf)


async def publish_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Write one record batch as it is (a raw Produce request); its base offset."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(
            transactional_id=None, required_acks=-1, timeout=10000,
            topics=[(topic, [(partition, batch)])],
        )  # fmt: skip
        response = await client.send(leader, request)
        ((_, partitions),) = response.topics
        ((_, error, offset, *_),) = partitions
        assert error == 0, f"the broker refused the batch: error {error}"
        return int(offset)
    finally:
        await client.close()


async def insert_source(conn: asyncpg.Connection, events: Iterable[TransactionEvent]) -> None:
    """The wallet system's rows for these transactions (what the runbook reconciles against)."""
    await conn.executemany(
        "INSERT INTO wallet_transactions (id, merchant_id, occurred_at, amount, currency,"
        " country, channel, type, status, fee) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        [
            (e.txn_id, e.merchant_id, e.occurred_at, e.amount, e.currency, e.country,
             e.channel, e.type.value, e.status.value, e.fee)
            for e in events
        ],
    )  # fmt: skip


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


async def counted(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(sum(tx_count), 0) FROM txn_hourly_agg"))


async def assert_totals_match_source(conn: asyncpg.Connection) -> None:
    """Runbook invariant on the hourly table (per UTC day): counts and sums equal the source."""
    src = await conn.fetch(
        "SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n, sum(amount) AS v"
        " FROM wallet_transactions GROUP BY 1 ORDER BY 1"
    )
    agg = await conn.fetch(
        "SELECT (hour AT TIME ZONE 'UTC')::date AS day, sum(tx_count) AS n,"
        " sum(gross_volume_local) AS v FROM txn_hourly_agg GROUP BY 1 ORDER BY 1"
    )
    assert [tuple(r) for r in agg] == [tuple(r) for r in src]


async def assert_live_matches_db(conn: asyncpg.Connection, redis: Redis) -> None:
    """Every merchant with data today (and the platform) has exactly PostgreSQL's figures."""
    today = datetime.now(UTC).date()
    merchants = [
        r[0]
        for r in await conn.fetch(
            "SELECT DISTINCT merchant_id FROM txn_hourly_agg WHERE merchant_id IS NOT NULL"
            " AND hour >= $1",
            datetime.combine(today, datetime.min.time(), tzinfo=UTC),
        )
    ]
    expected = await read_totals(conn, today, merchants, "USD")
    for owner, fields in expected.items():
        held = await redis.hgetall(live_key(owner, today))
        assert held, f"no live counters for {owner}"
        strip = {k: v for k, v in fields.items() if k != "as_of"}
        assert {k: v for k, v in held.items() if k != "as_of"} == strip, owner
        assert 0 < await redis.ttl(live_key(owner, today)) <= 2 * 86400


@dataclass
class Stack:
    """Names and URLs one test runs against."""

    bootstrap: str
    topic: str
    dlq: str
    group: str
    env: dict[str, str]


@asynccontextmanager
async def running_consumer(
    detector: Detector | None = None, **overrides: Any
) -> AsyncIterator[Ingestor]:
    """An in-process consumer (settings from the environment) until the block ends."""
    settings = load_settings(IngestSettings).model_copy(update=overrides)
    stop = asyncio.Event()
    async with create_pool(settings, max_size=3) as pool:
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await prod.start()
        try:
            live = LiveCounters(
                redis, settings.reporting_currency, settings.live_counter_ttl_seconds
            )
            ingestor = Ingestor(settings, pool, prod, live, detector)
            task = asyncio.create_task(ingestor.run(stop))
            try:
                yield ingestor
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
        finally:
            await prod.stop()
            await redis.aclose()


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 15.0) -> list[bytes]:
    """The first ``expect`` values of ``topic`` (from the beginning, no group)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return out
