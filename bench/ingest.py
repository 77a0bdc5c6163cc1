"""bench/ingest: sustained events/s of the consumer against two baselines on the same broker.

1. Pre-loads a topic with N synthetic events (``simulate``'s market, 200 merchants, event
   times over the last SPAN_HOURS, DUP_RATE of them published twice).
2. Ceiling: a bare aiokafka consumer that reads the topic and ``json.loads`` every value;
   for reference, the same with ``core.events.decode_event`` (the validation every event
   needs), the bound of any consumer that validates, before it writes anything.
3. Ours: the ``consume`` code path (``Ingestor``: validation, DLQ, ledger, hourly + minute
   aggregates, offsets, live counters in Redis), timed from its first batch to its last.
4. Floor: a naive consumer doing one transaction per event (ledger insert, one hourly upsert,
   offset update), run on the first FLOOR_EVENTS events and its rate extrapolated.
5. For reference, PostgreSQL's share alone: the same batches, summed beforehand, written one
   after the other by ``BatchWriter`` with no Kafka and nothing else running (``consume``
   overlaps two writes, so it can come close to this, or pass it on a quiet machine).
6. Ours again on two more topics, each as a ratio to 3. (target: >= 0.9x): the same events with
   POISON_RATE hostile records among them (deep nesting, huge exponents, NaN, invalid UTF-8,
   repeated fields, far-future times, long ids, NUL: each dead-lettered), and the same events
   in snappy batches (decompressed by the client, cramjam).
7. High cardinality: as many events from WIDE_MERCHANTS merchants across the eight currencies
   of WIDE_MARKETS, so that a batch makes many more hourly and minute rows; ours against a
   ceiling read from that topic (target: >= 0.35x).
Then checks exactly-once: the hourly aggregates count every unique transaction exactly once.
Each measured contender runs ROUNDS times and its best round is kept (the machine may be busy).

Run: ``make bench`` or ``set -a; . .stack/env; set +a; .venv/bin/python
bench/ingest.py [N [SPAN_HOURS]]``. Uses Redis database 13 (flushed) for the live counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, env, scratch_database, scratch_topics, table

from molam_workloads.core.db import create_pool
from molam_workloads.core.events import EARLIEST_EVENT, MAX_CLOCK_SKEW, decode_event
from molam_workloads.core.heap import CONSUMER_GEN0_THRESHOLD, freeze_startup_heap
from molam_workloads.ingest.aggregation import Summary, hours, micros
from molam_workloads.ingest.consumer import Ingestor
from molam_workloads.ingest.live_counters import LiveCounters
from molam_workloads.ingest.settings import IngestSettings
from molam_workloads.ingest.writer import BatchWriter
from molam_workloads.jobs.traffic import MARKETS, Market, history_times, merchants

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
# Event times of the backlog: a consumer catching up after SPAN_HOURS of downtime.
SPAN_HOURS = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
DUP_RATE = 0.05
POISON_RATE = 0.01
FLOOR_EVENTS = 4000
PARTITIONS = 2
ROUNDS = 2
# The consumer on its three streams (plain, poison, snappy), taken in turn: more rounds, as
# their ratios are what is read.
VARIANT_ROUNDS = 3
REDIS_DB = "13"
# The high-cardinality stream: 100x today's merchants, spread evenly over eight currencies
# (each with a seeded FX rate, migration 002).
WIDE_MERCHANTS = 20_000
WIDE_MARKETS: tuple[tuple[str, str, Decimal, float], ...] = (
    ("XOF", "SN", Decimal(5000), 1.0),
    ("XAF", "CM", Decimal(5000), 1.0),
    ("NGN", "NG", Decimal(8000), 1.0),
    ("GHS", "GH", Decimal(150), 1.0),
    ("KES", "KE", Decimal(1500), 1.0),
    ("MAD", "MA", Decimal(100), 1.0),
    ("EUR", "FR", Decimal(30), 1.0),
    ("USD", "LR", Decimal(40), 1.0),
)
# Local services whose CPU the consumer's work costs (read from /proc; 0 when remote).
SERVICES = ("postgres", "tansu", "redis-server")
# The ceiling reads batches as large as the consumer's, with its fetch settings (its defaults).
DEFAULTS = IngestSettings.model_construct()
MAX_RECORDS = DEFAULTS.ingest_batch_max_records


def synthetic(
    n: int,
    count: int = 200,
    markets: tuple[tuple[str, str, Decimal, float], ...] = MARKETS,
    run_id: str = "bench",
) -> tuple[list[bytes], int]:
    """Wire values (with duplicates) from ``count`` merchants of ``markets``, and the number of
    unique transactions."""
    rnd = random.Random(7)
    market = Market(merchants(count, rnd, markets), rnd, run_id)
    now = datetime.now(UTC)
    values = [
        json.dumps(market.transaction(t), separators=(",", ":")).encode()
        for t in history_times(int(n / (1 + DUP_RATE)), now - timedelta(hours=SPAN_HOURS), now, rnd)
    ]
    unique = len(values)
    dups = rnd.sample(values, n - unique)
    for v in dups:
        values.insert(rnd.randrange(len(values)), v)
    return values, unique


def rows_per_batch(values: Iterable[bytes]) -> tuple[float, float]:
    """Mean hourly and minute buckets (rows written) per batch of MAX_RECORDS records."""
    chunks: list[tuple[set[tuple[object, ...]], set[tuple[object, ...]]]] = []
    for i, v in enumerate(values):
        if i % MAX_RECORDS == 0:
            chunks.append((set(), set()))
        d = json.loads(v)
        cell = (d["merchant_id"], d["country"], d["currency"], d["channel"])
        chunks[-1][0].add((d["occurred_at"][:13], *cell))
        chunks[-1][1].add((d["occurred_at"][:16], *cell))
    return (
        sum(len(h) for h, _ in chunks) / len(chunks),
        sum(len(m) for _, m in chunks) / len(chunks),
    )


def poisoned(values: list[bytes]) -> list[bytes]:
    """``values`` with POISON_RATE hostile records among them, kinds in turn."""
    rnd = random.Random(11)
    doc = json.loads(values[0])
    amount = f'"amount":"{doc["amount"]}"'.encode()
    kinds = [
        b"[" * 6000,
        values[0].replace(amount, b'"amount":1e99999999999999999999'),
        values[0].replace(amount, b'"amount":NaN'),
        values[0].replace(b'"currency":"', b'"currency":"\xff'),
        values[0].replace(amount, amount + b"," + amount),
        json.dumps(doc | {"occurred_at": "2999-01-01T00:00:00Z"}).encode(),
        json.dumps(doc | {"event_id": "e" * 10_000}).encode(),
        json.dumps(doc | {"txn_id": "T\u0000"}).encode(),
        b"\x00" * 64,
    ]
    out = list(values)
    for i in range(int(len(values) * POISON_RATE)):
        out.insert(rnd.randrange(len(out)), kinds[i % len(kinds)])
    return out


async def preload(
    bootstrap: str, topic: str, values: list[bytes], compression: str | None = None
) -> float:
    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks="all",
        compression_type=compression,
    )  # fmt: skip
    await prod.start()
    started = time.perf_counter()
    try:
        futs = []
        for i, v in enumerate(values):
            futs.append(await prod.send(topic, v, partition=i % PARTITIONS))
            if len(futs) >= 5000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await prod.stop()
    return time.perf_counter() - started


def cpu_now() -> dict[str, float]:
    """This process's CPU seconds (as "consumer") and the local services'."""
    return {"consumer": time.process_time(), **cpu_seconds(*SERVICES)}


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


async def ceiling(
    bootstrap: str, topic: str, n: int, validate: bool = False
) -> tuple[float, dict[str, float]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=DEFAULTS.ingest_max_partition_fetch_bytes,
        fetch_max_wait_ms=DEFAULTS.ingest_fetch_max_wait_ms,
    )  # fmt: skip
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen = 0
        started, cpu = time.perf_counter(), cpu_now()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            for records in batch.values():
                for r in records:
                    if validate:
                        decode_event(r.value)
                    else:
                        json.loads(r.value)
                seen += sum(len(r) for r in batch.values())
            if not batch and time.perf_counter() - started > 120:
                raise RuntimeError(f"ceiling: only {seen}/{n} records")
        return time.perf_counter() - started, cpu_spent(cpu, cpu_now())
    finally:
        await consumer.stop()


async def ours(settings: IngestSettings, n: int) -> tuple[float, dict[str, float]]:
    """Seconds (and CPU seconds) from the first batch to the batch that completes ``n`` records."""
    first: list[float] = []
    cpu: list[dict[str, float]] = []
    done = asyncio.Event()
    seen = 0
    stop = asyncio.Event()
    async with create_pool(settings, max_size=4) as pool:
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        await redis.flushdb()
        prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await prod.start()
        try:
            live = LiveCounters(
                redis, settings.reporting_currency, settings.live_counter_ttl_seconds
            )
            ingestor = Ingestor(settings, pool, prod, live)
            prepare, commit = ingestor.prepare, ingestor.commit

            async def first_batch(batch, epoch=None):  # type: ignore[no-untyped-def]
                if not first:
                    first.append(time.perf_counter())
                    cpu.append(cpu_now())
                return await prepare(batch, epoch)

            async def counted(consumer, prepared, previous=None):  # type: ignore[no-untyped-def]
                nonlocal seen
                report = await commit(consumer, prepared, previous)
                seen += 0 if report.abandoned else report.records
                if seen >= n and not done.is_set():
                    cpu.append(cpu_now())
                    done.set()
                return report

            ingestor.prepare = first_batch  # type: ignore[method-assign]
            ingestor.commit = counted  # type: ignore[method-assign]
            task = asyncio.create_task(ingestor.run(stop))
            await asyncio.wait_for(done.wait(), 600)
            elapsed = time.perf_counter() - first[0]
            stop.set()
            await task
            return elapsed, cpu_spent(*cpu)
        finally:
            await prod.stop()
            await redis.flushdb()
            await redis.aclose()


async def writes_alone(dsn: str, values: list[bytes]) -> float:
    """Seconds PostgreSQL takes to write the batches, summed beforehand, one after the other."""
    now = datetime.now(UTC)
    since = micros(now - timedelta(hours=IngestSettings().minute_agg_retention_hours))
    batches = []
    for i in range(0, len(values), MAX_RECORDS):
        chunk: list[bytes | None] = list(values[i : i + MAX_RECORDS])
        summary = Summary(since)
        taken, _ = summary.feed(
            chunk, 0, len(chunk), micros(EARLIEST_EVENT), micros(now + MAX_CLOCK_SKEW)
        )
        assert taken == len(chunk)  # the bench's events are all plainly valid
        batches.append(summary)
    conn = await asyncpg.connect(dsn)
    try:
        writer = BatchWriter("bench-writes", "bench")
        await writer.ensure_partitions(conn, {h for b in batches for h in hours(b)})
        started = time.perf_counter()
        for n, batch in enumerate(batches, 1):
            await writer.write(conn, batch, {0: n})
        return time.perf_counter() - started
    finally:
        await conn.execute(
            "TRUNCATE txn_hourly_agg, txn_minute_agg, ingested_transactions, consumer_offsets"
        )
        await conn.close()


NAIVE_UPSERT = """
INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count,
    gross_volume_local)
VALUES (date_trunc('hour', $1::timestamptz, 'UTC'), $2, $3, $4, $5, 1, $6)
ON CONFLICT (hour, merchant_id, country, currency, channel) DO UPDATE
SET tx_count = txn_hourly_agg.tx_count + 1,
    gross_volume_local = txn_hourly_agg.gross_volume_local + EXCLUDED.gross_volume_local
"""


async def floor(dsn: str, bootstrap: str, topic: str, n: int) -> float:
    """One transaction per event: the obvious, slow design."""
    conn = await asyncpg.connect(dsn)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=DEFAULTS.ingest_fetch_max_wait_ms,
    )  # fmt: skip
    await consumer.start()
    try:
        await conn.execute("TRUNCATE txn_hourly_agg, ingested_transactions, consumer_offsets")
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen = 0
        started = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in batch.values():
                for r in records:
                    ev = decode_event(r.value)
                    async with conn.transaction():
                        new = await conn.fetchval(
                            "INSERT INTO ingested_transactions (txn_id, event_id, occurred_at,"
                            " source) VALUES ($1, $2, $3, 'stream') ON CONFLICT DO NOTHING"
                            " RETURNING txn_id",
                            ev.txn_id, ev.event_id, ev.occurred_at,
                        )  # fmt: skip
                        if new:
                            await conn.execute(
                                NAIVE_UPSERT, ev.occurred_at, ev.merchant_id, ev.country,
                                ev.currency, ev.channel, ev.amount,
                            )  # fmt: skip
                        await conn.execute(
                            "INSERT INTO consumer_offsets (consumer_group, topic, partition,"
                            " next_offset) VALUES ('naive', $1, $2, $3) ON CONFLICT"
                            " (consumer_group, topic, partition) DO UPDATE"
                            " SET next_offset = EXCLUDED.next_offset",
                            topic, r.partition, r.offset + 1,
                        )  # fmt: skip
                    seen += 1
                    if seen >= n:
                        break
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await conn.close()


async def main() -> None:
    bootstrap = env("KAFKA_BOOTSTRAP_SERVERS")
    redis_url = urlunparse(urlparse(env("REDIS_URL"))._replace(path="/" + REDIS_DB))
    print(
        f"bench/ingest: {N} events ({DUP_RATE:.0%} duplicates) over {SPAN_HOURS:g} h,"
        f" {PARTITIONS} partitions"
    )
    values, unique = synthetic(N)
    wide, wide_unique = synthetic(N, WIDE_MERCHANTS, WIDE_MARKETS, "bench-wide")
    shapes = {"200 merchants": rows_per_batch(values), "wide": rows_per_batch(wide)}
    # The collector settings ``consume`` runs with, for every contender alike.
    freeze_startup_heap(CONSUMER_GEN0_THRESHOLD)
    poison = poisoned(values)
    async with (
        scratch_database("bench_ingest") as dsn,
        scratch_topics(
            bootstrap, ("bench.wallet", PARTITIONS), ("bench.dlq", 1),
            ("bench.poison", PARTITIONS), ("bench.snappy", PARTITIONS),
            ("bench.wide", PARTITIONS),
        ) as topics,
    ):  # fmt: skip
        topic, dlq, poison_topic, snappy_topic, wide_topic = topics
        seconds = await preload(bootstrap, topic, values)
        print(f"pre-loaded in {seconds:.1f}s ({len(values) / seconds:,.0f}/s)")
        await preload(bootstrap, poison_topic, poison)
        await preload(bootstrap, snappy_topic, values, "snappy")
        await preload(bootstrap, wide_topic, wide)

        # Best of ROUNDS: the machine may be shared, and a slow round says little about us.
        ceiling_s, ceiling_cpu = min(
            [await ceiling(bootstrap, topic, len(values)) for _ in range(ROUNDS)]
        )
        validated_s, validated_cpu = min(
            [await ceiling(bootstrap, topic, len(values), validate=True) for _ in range(ROUNDS)]
        )
        wide_ceiling_s, wide_ceiling_cpu = min(
            [await ceiling(bootstrap, wide_topic, len(wide)) for _ in range(ROUNDS)]
        )
        checks: list[tuple[str, int, int, int]] = []

        async def one_round(
            name: str, source: str, n: int, want: int, group: str
        ) -> tuple[float, dict[str, float]]:
            settings = IngestSettings(
                database_url=dsn, redis_url=redis_url, kafka_bootstrap_servers=bootstrap,
                kafka_topic=source, dlq_topic=dlq, kafka_consumer_group=group,
                kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=500,
                sira_enabled=False, metrics_port=0,
            )  # fmt: skip
            timed = await ours(settings, n)
            conn = await asyncpg.connect(dsn)
            try:
                checks.append(
                    (
                        name,
                        want,
                        int(await conn.fetchval("SELECT sum(tx_count) FROM txn_hourly_agg")),
                        int(await conn.fetchval("SELECT count(*) FROM ingested_transactions")),
                    )
                )
                # A clean slate for the next round (a second pass would only find duplicates).
                await conn.execute(
                    "TRUNCATE txn_hourly_agg, txn_minute_agg, ingested_transactions,"
                    " consumer_offsets"
                )
            finally:
                await conn.close()
            return timed

        # The three streams in turn within each round, so that a busy spell of the machine
        # weighs on all of them alike and their ratios stay meaningful.
        streams = {
            "plain": (topic, len(values), unique),
            "1% poison": (poison_topic, len(poison), unique),
            "snappy": (snappy_topic, len(values), unique),
            "wide": (wide_topic, len(wide), wide_unique),
        }
        timings: dict[str, list[tuple[float, dict[str, float]]]] = {k: [] for k in streams}
        for round_ in range(VARIANT_ROUNDS):
            for name, (source, n, want) in streams.items():
                group = f"bench-ingest-{name.replace('% ', '-')}-{round_}"
                timings[name].append(await one_round(name, source, n, want, group))
        for name, out in timings.items():
            print(f"consumer rounds, {name} (s): " + ", ".join(f"{r:.2f}" for r, _ in out))
        ours_s, ours_cpu = min(timings["plain"])
        poison_s, poison_cpu = min(timings["1% poison"])
        snappy_s, snappy_cpu = min(timings["snappy"])
        wide_s, wide_cpu = min(timings["wide"])
        writes_s = min([await writes_alone(dsn, values) for _ in range(ROUNDS)])
        floor_s = await floor(dsn, bootstrap, topic, FLOOR_EVENTS)

    ceil_rate = len(values) / ceiling_s
    wide_ceil_rate = len(wide) / wide_ceiling_s
    floor_rate = FLOOR_EVENTS / floor_s
    wide_label = f"{WIDE_MERCHANTS:,} merchants x {len(WIDE_MARKETS)} currencies"
    # name: (events, seconds, the ceiling read from the same topic's events)
    rates = {
        "raw aiokafka + json.loads (ceiling)": (len(values), ceiling_s, ceil_rate),
        "aiokafka + decode_event (validation only)": (len(values), validated_s, ceil_rate),
        "molam consume (Ingestor)": (len(values), ours_s, ceil_rate),
        f"  same, {POISON_RATE:.0%} poison records (dead-lettered)": (
            len(poison),
            poison_s,
            ceil_rate,
        ),
        "  same, snappy batches": (len(values), snappy_s, ceil_rate),
        "its PostgreSQL writes alone (no Kafka)": (len(values), writes_s, ceil_rate),
        f"naive 1 txn/event (floor, {FLOOR_EVENTS} events)": (FLOOR_EVENTS, floor_s, ceil_rate),
        f"{wide_label}: raw consume (its ceiling)": (len(wide), wide_ceiling_s, wide_ceil_rate),
        f"{wide_label}: molam consume": (len(wide), wide_s, wide_ceil_rate),
    }
    rows = [
        [name, f"{n:,}", f"{s:.2f}", f"{n / s:,.0f}", f"{n / s / ceil:.2f}x",
         f"{n / s / floor_rate:.1f}x"]
        for name, (n, s, ceil) in rates.items()
    ]  # fmt: skip
    print(table(["consumer", "events", "seconds", "events/s", "vs ceiling", "vs floor"], rows))
    # Where the time goes: CPU microseconds per event of each process during the best rounds.
    # Summed over processes and divided by the cores, it bounds the rate on this machine.
    cores = os.cpu_count() or 1
    cpu_rows = []
    for name, (n, spent) in {
        "ceiling": (len(values), ceiling_cpu),
        "validation only": (len(values), validated_cpu),
        "molam consume": (len(values), ours_cpu),
        f"  same, {POISON_RATE:.0%} poison records": (len(poison), poison_cpu),
        "  same, snappy batches": (len(values), snappy_cpu),
        f"{WIDE_MERCHANTS:,} merchants: ceiling": (len(wide), wide_ceiling_cpu),
        f"{WIDE_MERCHANTS:,} merchants: molam consume": (len(wide), wide_cpu),
    }.items():
        per_event = {k: v / n * 1e6 for k, v in spent.items()}
        total = sum(per_event.values())
        cpu_rows.append(
            [name, *(f"{per_event[k]:.1f}" for k in ("consumer", *SERVICES)), f"{total:.1f}",
             f"{cores / total * 1e6:,.0f}"]
        )  # fmt: skip
    print(
        table(
            ["CPU µs per event", "consumer process", *SERVICES, "all", f"bound on {cores} cores/s"],
            cpu_rows,
        )
    )
    # Against plain consume (target >= 0.9x): records/s, and CPU per record of all processes
    # inverted (the steadier figure when others share the machine).
    plain_rate = len(values) / ours_s
    plain_cpu = sum(ours_cpu.values()) / len(values)
    for name, n, s, cpu in (
        ("1% poison", len(poison), poison_s, poison_cpu),
        ("snappy", len(values), snappy_s, snappy_cpu),
    ):
        rate, by_cpu = n / s / plain_rate, plain_cpu / (sum(cpu.values()) / n)
        print(
            f"{name} against plain consume (target >= 0.9x): {rate:.2f}x records/s"
            f" ({'met' if rate >= 0.9 else 'MISSED'}), {by_cpu:.2f}x by CPU per record"
        )
    for name, (hourly, minute) in shapes.items():
        print(
            f"rows per batch of {MAX_RECORDS:,}, {name}: {hourly:,.0f} hourly, {minute:,.0f} minute"
        )
    ok = all(total == want == ledger for _, want, total, ledger in checks)
    print(
        f"exactly-once, every round: (stream, unique transactions, sum(tx_count), ledger) ="
        f" {checks}: {'OK' if ok else 'MISMATCH'}"
    )
    ratio_c, ratio_f = (len(values) / ours_s) / ceil_rate, (len(values) / ours_s) / floor_rate
    ratio_w = (len(wide) / wide_s) / wide_ceil_rate
    print(
        f"targets: >= 0.5x ceiling ({'met' if ratio_c >= 0.5 else 'MISSED'}: {ratio_c:.2f}x),"
        f" >= 10x floor ({'met' if ratio_f >= 10 else 'MISSED'}: {ratio_f:.1f}x),"
        f" {wide_label} >= 0.35x its ceiling ({'met' if ratio_w >= 0.35 else 'MISSED'}:"
        f" {ratio_w:.2f}x)"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
