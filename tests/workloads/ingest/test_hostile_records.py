"""No record stops ingestion: every codec, hostile values and batches the client cannot unpack,
against the real broker, PostgreSQL and Redis."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from helpers.ingest import (
    Stack,
    assert_live_matches_db,
    assert_totals_match_source,
    counted,
    insert_source,
    make_events,
    publish_batch,
    publish_compressed,
    read_topic,
    running_consumer,
    unreadable_batch,
    wait_until,
)
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from molam_workloads.core.events import encode_event

CODECS = ("gzip", "snappy", "lz4", "zstd")


def poisons(template: bytes) -> list[tuple[bytes, str]]:
    """Hostile values and the reason each must be dead-lettered with."""
    doc = json.loads(template)

    def spelled(**over: str) -> bytes:
        return json.dumps(doc | over).encode()

    amount = f'"amount": "{doc["amount"]}"'.encode()
    text = json.dumps(doc).encode()
    return [
        (b"[" * 6000, "too_deep"),
        (spelled(txn_id="P-deep").replace(b"{", b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b", ", 1),
         "too_deep"),
        (spelled(txn_id="P-exp").replace(amount, b'"amount": 1e99999999999999999999'),
         "bad_number"),
        (spelled(txn_id="P-nan").replace(amount, b'"amount": NaN'), "bad_number"),
        (spelled(txn_id="P-utf8", channel="card").replace(b"card", b"c\xffrd"), "not_json"),
        (spelled(txn_id="P-big", pad="x" * 900_000), "oversized"),
        (spelled(txn_id="P-dup").replace(amount, amount + b', "amount": "1"'), "duplicate_field"),
        (spelled(txn_id="P-future", occurred_at="2999-01-01T00:00:00Z"), "invalid_field"),
        (spelled(txn_id="P-year", occurred_at="10000-01-01T00:00:00Z"), "invalid_field"),
        (spelled(txn_id="P-long", event_id="e" * 10_000), "invalid_field"),
        (spelled(txn_id="P-nul\u0000"), "invalid_field"),
        (text.replace(b'"channel": "', b'"channel": "\x00'), "not_json"),
        (b"\x00" * 64, "not_json"),
    ]  # fmt: skip


def _sample(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


async def _offsets(db: asyncpg.Connection, topic: str) -> dict[int, int]:
    rows = await db.fetch(
        "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1", topic
    )
    return {r["partition"]: r["next_offset"] for r in rows}


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_every_codec_and_hostile_records_leave_the_valid_counted_once(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    events = make_events(240, seed=31, span=timedelta(hours=2))
    await insert_source(db, events)
    bad = poisons(encode_event(events[0]))
    # Each codec's batches carry a quarter of the events and of the hostile values.
    published = 0
    for i, codec in enumerate(CODECS):
        values = [encode_event(e) for e in events[i::4]]
        for j, (value, _) in enumerate(bad[i::4]):
            values.insert(j * 7 + 3, value)
        await publish_compressed(stack.bootstrap, stack.topic, values, codec)
        published += len(values)
    # Batches no client can unpack: one mid-stream, one last in its partition (its skip must
    # still reach PostgreSQL, with no record after it to carry the offset).
    garbage = unreadable_batch([b"a", b"b", b"c"], "garbage_gzip")
    corrupt = unreadable_batch([b"d", b"e", b"f", b"g"], "bad_crc")
    garbage_at = await publish_batch(stack.bootstrap, stack.topic, 0, garbage)
    more = [encode_event(e) for e in make_events(20, seed=32, prefix="U")]
    await insert_source(db, make_events(20, seed=32, prefix="U"))
    await publish_compressed(stack.bootstrap, stack.topic, more, "snappy")
    corrupt_at = await publish_batch(stack.bootstrap, stack.topic, 1, corrupt)
    offsets = published + len(more) + 3 + 4
    unreadable_before = {
        r: _sample("analytics_ingest_unreadable_records_total", r)
        for r in ("unreadable_batch", "corrupt_batch")
    }

    async with running_consumer(ingest_batch_max_records=100) as ingestor:
        await wait_until(lambda: _all_consumed(db, stack.topic, offsets), 60)
        dead = await read_topic(stack.bootstrap, stack.dlq, len(bad) + 3, timeout=5)

    valid = len(events) + len(more)
    assert await counted(db) == valid
    assert ingestor.totals["duplicates"] == 0
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)
    docs = [json.loads(d) for d in dead]
    assert len(docs) == len(bad) + 2  # exactly one dead letter for each
    assert Counter(d["reason"] for d in docs) == Counter(
        [reason for _, reason in bad] + ["unreadable_batch", "corrupt_batch"]
    )
    skipped = {d["reason"]: d for d in docs if "last_offset" in d}
    assert (skipped["unreadable_batch"]["partition"], skipped["unreadable_batch"]["offset"]) == (
        0,
        garbage_at,
    )
    assert skipped["unreadable_batch"]["last_offset"] == garbage_at + 2
    assert skipped["corrupt_batch"]["partition"] == 1
    assert (skipped["corrupt_batch"]["offset"], skipped["corrupt_batch"]["last_offset"]) == (
        corrupt_at,
        corrupt_at + 3,
    )
    # Durable: the partition's stored offset is past the corrupt batch that ended it.
    assert (await _offsets(db, stack.topic))[1] == corrupt_at + 4
    for reason, n in (("unreadable_batch", 3), ("corrupt_batch", 4)):
        after = _sample("analytics_ingest_unreadable_records_total", reason)
        assert after - unreadable_before[reason] == n
    huge = next(d for d in docs if d["reason"] == "oversized")
    assert huge["truncated"] and huge["original_size"] > 900_000

    # A restarted consumer starts past the skipped batches: no second dead letter, and it
    # counts what comes next on both partitions.
    later = make_events(2, seed=33, prefix="L")
    await insert_source(db, later)
    async with running_consumer():
        prod = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await prod.start()
        try:
            for p, e in enumerate(later):
                await prod.send_and_wait(stack.topic, encode_event(e), partition=p)
        finally:
            await prod.stop()
        await wait_until(lambda: _counted_is(db, valid + 2))
    assert len(await read_topic(stack.bootstrap, stack.dlq, len(docs) + 1, timeout=3)) == len(docs)
    await assert_totals_match_source(db)


async def _all_consumed(db: asyncpg.Connection, topic: str, n: int) -> bool:
    return sum((await _offsets(db, topic)).values()) == n


async def _counted_is(db: asyncpg.Connection, n: int) -> bool:
    return await counted(db) == n
