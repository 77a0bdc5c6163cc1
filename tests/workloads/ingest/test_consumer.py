"""The consumer in-process against the real broker, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

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
    read_topic,
    running_consumer,
    wait_until,
    with_duplicates,
)
from redis.asyncio import Redis

from molam_workloads.core import metrics
from molam_workloads.core.events import MAX_EVENT_BYTES, TransactionEvent, encode_event


async def _ledger(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ingested_transactions"))


@pytest.mark.parametrize("stack", [3], indirect=True)
async def test_duplicates_count_once_and_reconcile(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    # Two days of history plus today, 20% published twice.
    events = make_events(600, span=timedelta(hours=47))  # all within the minute retention
    await insert_source(db, events)
    values = with_duplicates(events, 0.2)
    await publish(stack.bootstrap, stack.topic, values)

    async with running_consumer() as ingestor:
        await wait_until(lambda: _consumed(db, stack.topic, len(values)))
        # Late duplicates, after their originals were committed: still counted once.
        await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[:50]])
        await wait_until(lambda: _consumed(db, stack.topic, len(values) + 50))
    # Every record read exactly once by the consumer itself (no rewind after assignment).
    assert ingestor.totals["records"] == len(values) + 50
    assert ingestor.totals["duplicates"] == len(values) + 50 - len(events)

    assert await counted(db) == len(events)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)
    minute = await db.fetchval("SELECT sum(tx_count) FROM txn_minute_agg")
    assert minute == len(events)  # all within the 48 h minute horizon


async def _ledger_is(db: asyncpg.Connection, n: int) -> bool:
    return await _ledger(db) >= n


async def _consumed(db: asyncpg.Connection, topic: str, n: int) -> bool:
    """True once the stored offsets account for ``n`` records (offsets start at 0)."""
    total = await db.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1", topic
    )
    return bool(total == n)


async def test_malformed_and_oversized_go_to_dlq(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    good = make_events(40, seed=7)
    await insert_source(db, good)
    base = json.loads(encode_event(good[0]))
    bad: list[bytes | None] = [
        b"not json at all",
        b"\xff\xfe\x00binary",
        b"[1, 2, 3]",
        json.dumps({k: v for k, v in base.items() if k != "amount"} | {"txn_id": "X1"}).encode(),
        json.dumps(base | {"txn_id": "X2", "currency": "ZZZ"}).encode(),
        json.dumps(base | {"txn_id": "X3", "amount": "-5"}).encode(),
        json.dumps(base | {"txn_id": "X4", "amount": "0"}).encode(),
        json.dumps(base | {"txn_id": "X5", "status": "weird"}).encode(),
        json.dumps(base | {"txn_id": "X6", "pad": "x" * (MAX_EVENT_BYTES + 10)}).encode(),
        None,
        # PostgreSQL text cannot hold NUL: accepted, it would fail its batch on every retry.
        json.dumps(base | {"txn_id": "X7\u0000"}).encode(),
    ]
    values: list[bytes | None] = [encode_event(e) for e in good]
    for i, b in enumerate(bad):
        values.insert(i * 4 + 1, b)
    await publish(stack.bootstrap, stack.topic, values)

    async with running_consumer():
        await wait_until(lambda: _ledger_is(db, len(good)))
        dead = await read_topic(stack.bootstrap, stack.dlq, len(bad))

    assert await counted(db) == len(good)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)
    docs = [json.loads(d) for d in dead]
    reasons = sorted(d["reason"] for d in docs)
    assert reasons == sorted(
        ["not_json", "not_json", "not_json", "missing_field", "unknown_currency",
         "non_positive_amount", "non_positive_amount", "invalid_field", "oversized", "empty",
         "invalid_field"]
    )  # fmt: skip
    assert all(d["topic"] == stack.topic and d["offset"] >= 0 and d["detail"] for d in docs)
    binary = next(d for d in docs if "original_base64" in d)
    assert binary["reason"] == "not_json"
    oversized = next(d for d in docs if d["reason"] == "oversized")
    assert oversized["original_size"] > MAX_EVENT_BYTES and "original_text" in oversized


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_small_batches_written_two_at_a_time_count_copies_once(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    """Batches of 30 records: the next batch writes its ledger while the one before commits, and
    copies of a transaction in neighbouring batches (or the same one) still count once."""
    events = make_events(400, seed=11, span=timedelta(hours=3))
    await insert_source(db, events)
    values = [encode_event(e) for e in events]
    # Every fifth transaction again 10-40 records later: mostly in the next batch or the one after.
    for i in range(len(events) - 1, 0, -5):
        values.insert(min(len(values), i + 10 + i % 31), encode_event(events[i]))
    await publish(stack.bootstrap, stack.topic, values)
    async with running_consumer(ingest_batch_max_records=30) as ingestor:
        await wait_until(lambda: _consumed(db, stack.topic, len(values)))
    assert ingestor.totals["duplicates"] == len(values) - len(events)
    assert await counted(db) == len(events)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)


def _unusual(ev: TransactionEvent) -> bytes:
    """A valid spelling the compiled reader leaves to ``decode_event``: money as a JSON number,
    a lower-case currency, a local time with its offset, padding the model strips."""
    doc = json.loads(encode_event(ev))
    doc["currency"] = doc["currency"].lower()
    doc["channel"] = f" {doc['channel']} "
    doc["occurred_at"] = ev.occurred_at.astimezone(timezone(timedelta(hours=-3))).isoformat()
    text = json.dumps(doc)
    return text.replace(f'"amount": "{doc["amount"]}"', f'"amount": {doc["amount"]}').encode()


async def test_plain_and_unusual_spellings_of_one_transaction_count_once(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    events = make_events(80, seed=5)
    await insert_source(db, events)
    assert b'"amount": ' + str(events[0].amount).encode() in _unusual(events[0])
    # Each transaction twice, once in each spelling, in alternating order.
    values = [
        v
        for i, e in enumerate(events)
        for v in ((encode_event(e), _unusual(e)) if i % 2 else (_unusual(e), encode_event(e)))
    ]
    await publish(stack.bootstrap, stack.topic, values)
    async with running_consumer() as ingestor:
        await wait_until(lambda: _consumed(db, stack.topic, len(values)))
    assert ingestor.totals["duplicates"] == len(events)
    assert ingestor.totals["dead"] == 0
    assert await counted(db) == len(events)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)


@pytest.mark.parametrize("stack", [4], indirect=True)
async def test_rebalance_between_two_consumers_keeps_totals_exact(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    events = make_events(1500, seed=11, span=timedelta(hours=3))
    await insert_source(db, events)
    values = with_duplicates(events, 0.1, seed=12)
    half = len(values) // 2
    await publish(stack.bootstrap, stack.topic, values[:half])

    # Small batches so the first consumer is mid-stream when the second one joins.
    async with running_consumer(ingest_batch_max_records=50):
        await wait_until(lambda: _ledger_is(db, 100))
        async with running_consumer(ingest_batch_max_records=50) as second:
            await publish(stack.bootstrap, stack.topic, values[half:])
            await wait_until(lambda: _ledger_is(db, len(events)), 40)
            await wait_until(lambda: _second_owns_some(second), 10)
        # The first consumer takes everything back after the second leaves.
        await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[::7]])
        await asyncio.sleep(0)
        await wait_until(lambda: _ledger_is(db, len(events)))

    assert await counted(db) == len(events)
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)


async def _second_owns_some(second: object) -> bool:
    return bool(getattr(second, "positions", None))


async def test_restart_resumes_from_offsets_in_postgres(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    events = make_events(300, seed=21)
    await insert_source(db, events)
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[:150]])
    async with running_consumer():
        await wait_until(lambda: _ledger_is(db, 150))
    # The second consumer starts where PostgreSQL says the first one stopped: it reads only
    # the new records, none of the first 150 again.
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[150:]])
    async with running_consumer() as second:
        await wait_until(lambda: _ledger_is(db, 300))
    assert second.totals["records"] == 150 and second.totals["duplicates"] == 0
    assert await counted(db) == 300
    await assert_totals_match_source(db)
    await assert_live_matches_db(db, redis)
    stored = await db.fetchval("SELECT next_offset FROM consumer_offsets")
    assert stored == 300


async def test_old_events_create_their_partition_and_skip_minutes(
    stack: Stack, db: asyncpg.Connection
) -> None:
    old = make_events(20, seed=31, start=datetime(2003, 5, 17, 12, tzinfo=UTC))
    await insert_source(db, old)
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in old])
    async with running_consumer():
        await wait_until(lambda: _ledger_is(db, 20))
    assert await db.fetchval("SELECT to_regclass('txn_hourly_agg_2003_05') IS NOT NULL")
    assert await counted(db) == 20
    assert await db.fetchval("SELECT count(*) FROM txn_minute_agg") == 0
    await assert_totals_match_source(db)


class _BrokenDetector:
    def __init__(self) -> None:
        self.calls: list[tuple[set[str | None], datetime]] = []

    async def on_batch(self, merchants: set[str | None], watermark: datetime) -> None:
        self.calls.append((merchants, watermark))
        raise RuntimeError("detector bug")


async def test_a_failing_detector_never_stops_ingestion(
    stack: Stack, db: asyncpg.Connection, redis: Redis
) -> None:
    events = make_events(200, seed=33)
    await insert_source(db, events)
    detector = _BrokenDetector()
    failures = metrics.SIRA_FAILURES._value.get()
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[:100]])
    async with running_consumer(detector, ingest_batch_max_records=40):
        await wait_until(lambda: _ledger_is(db, 100))
        await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events[100:]])
        await wait_until(lambda: _ledger_is(db, 200))
    assert await counted(db) == 200
    await assert_live_matches_db(db, redis)
    assert len(detector.calls) >= 2
    assert metrics.SIRA_FAILURES._value.get() - failures == len(detector.calls)
    merchants, watermark = detector.calls[-1]
    assert merchants and watermark <= datetime.now(UTC)
