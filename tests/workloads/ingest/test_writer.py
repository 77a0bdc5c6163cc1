"""The batch write against the real PostgreSQL: the ledger it keeps and the buckets it adds to.

What lands in the tables is checked against the obvious event-by-event reference and against
hand-computed values, and the ledger against a concurrent insert of the same transaction.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from molam_workloads.core.events import TransactionEvent
from molam_workloads.core.measures import MEASURES
from molam_workloads.ingest.aggregation import Summary, hours, summarize
from molam_workloads.ingest.writer import BatchWriter, PreviousBatchNotWritten

from .reference import (
    T0,
    Rows,
    assert_mixed_statuses_row,
    dedupe,
    ev,
    m,
    mixed_statuses,
    one_by_one,
    one_per_dimension,
    random_events,
    truncate_hour,
    truncate_minute,
)


async def write(
    db: asyncpg.Connection,
    events: list[TransactionEvent],
    since: datetime | None = None,
    offsets: dict[int, int] | None = None,
) -> list[str]:
    """Write ``events`` as one batch; the txn_ids it newly counted."""
    batch = summarize(events, since)
    writer = BatchWriter("g", "t")
    await writer.ensure_partitions(db, hours(batch))
    return (await writer.write(db, batch, offsets or {})).txn_ids()


async def table(db: asyncpg.Connection, name: str, time_column: str) -> Rows:
    rows = await db.fetch(
        f"SELECT {time_column}, merchant_id, country, currency, channel, {', '.join(MEASURES)}"
        f" FROM {name}"
    )
    return {tuple(r[:5]): list(r[5:]) for r in rows}


async def test_every_transaction_counts_in_tx_count_and_gross_only_succeeded_in_the_splits(
    db: asyncpg.Connection,
) -> None:
    await write(db, mixed_statuses())
    row = assert_mixed_statuses_row(await table(db, "txn_hourly_agg", "hour"))
    assert (m(row, "payout_count"), m(row, "payout_volume_local")) == (0, Decimal(0))


async def test_buckets_split_by_every_dimension_and_time(db: asyncpg.Connection) -> None:
    await write(db, one_per_dimension())
    assert len(await table(db, "txn_hourly_agg", "hour")) == 6
    assert len(await table(db, "txn_minute_agg", "minute")) == 7


async def test_a_second_batch_adds_to_the_buckets_and_the_ledger_rejects_repeats(
    db: asyncpg.Connection,
) -> None:
    first = [ev("b", status="failed"), ev("c", merchant_id="M-2")]
    assert await write(db, first, offsets={0: 2}) == ["b", "c"]
    second = [
        ev("a"),
        ev("b", status="failed"),  # counted by the first batch
        ev("c", merchant_id="M-2"),  # likewise
        ev("d", type="refund"),
        ev("a"),  # the same transaction again in one batch: counted once
        # (with other content it is a conflicting duplicate: test_conflicting_duplicates.py)
    ]
    counted = await write(db, second, offsets={0: 7})
    assert counted == ["a", "d"]
    unique = dedupe(first + second)
    assert await table(db, "txn_hourly_agg", "hour") == one_by_one(unique, truncate_hour)
    assert await table(db, "txn_minute_agg", "minute") == one_by_one(unique, truncate_minute)
    assert await db.fetchval("SELECT count(*) FROM ingested_transactions") == 4
    assert await db.fetchval("SELECT next_offset FROM consumer_offsets") == 7


async def test_offsets_only_move_forward(db: asyncpg.Connection) -> None:
    await write(db, [ev("a")], offsets={0: 10, 1: 3})
    await write(db, [ev("b")], offsets={0: 4, 1: 5})
    got = await db.fetch("SELECT partition, next_offset FROM consumer_offsets ORDER BY 1")
    assert [tuple(r) for r in got] == [(0, 10), (1, 5)]


async def test_minute_buckets_only_from_the_horizon_on(db: asyncpg.Connection) -> None:
    old = ev("old", occurred_at=T0 - timedelta(days=3))
    await write(db, [old, ev("new")], since=T0 - timedelta(hours=48))
    assert len(await table(db, "txn_hourly_agg", "hour")) == 2
    minute = await table(db, "txn_minute_agg", "minute")
    assert [k[0] for k in minute] == [T0.replace(second=0)]


async def test_sql_sums_equal_the_event_by_event_sums(db: asyncpg.Connection) -> None:
    events = random_events(3000, seed=5)
    for chunk in (events[:1000], events[1000:]):
        await write(db, chunk)
    for name, unit, bucket in (
        ("txn_hourly_agg", "hour", truncate_hour),
        ("txn_minute_agg", "minute", truncate_minute),
    ):
        # Decimal equality: the columns are numeric(20,4), so 1.5 comes back as 1.5000.
        assert await table(db, name, unit) == one_by_one(events, bucket)


async def test_an_empty_batch_still_moves_the_offsets(db: asyncpg.Connection) -> None:
    assert await write(db, [], offsets={0: 5}) == []
    assert await db.fetchval("SELECT next_offset FROM consumer_offsets") == 5


async def test_a_transaction_inserted_meanwhile_by_another_writer_is_not_counted_twice(
    db: asyncpg.Connection, database_url: str
) -> None:
    other = await asyncpg.connect(database_url)
    try:
        # Another consumer (or backfill) inserts "x" and has not committed yet.
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "INSERT INTO ingested_transactions (txn_id, occurred_at, source)"
            " VALUES ('x', now(), 'backfill')"
        )
        ours = asyncio.create_task(write(db, [ev("a"), ev("x"), ev("z")], offsets={0: 3}))
        await asyncio.sleep(0.5)
        assert not ours.done()  # waiting for the other transaction's "x"
        await tx.commit()
        counted = await asyncio.wait_for(ours, 10)
    finally:
        await other.close()
    assert counted == ["a", "z"]
    hourly = await table(db, "txn_hourly_agg", "hour")
    assert [m(r, "tx_count") for r in hourly.values()] == [2]
    assert await db.fetchval("SELECT count(*) FROM ingested_transactions") == 3


async def _offsets(db: asyncpg.Connection) -> list[int]:
    return [r[0] for r in await db.fetch("SELECT next_offset FROM consumer_offsets")]


async def _write_after(
    conn: asyncpg.Connection, events: list[TransactionEvent], offset: int
) -> tuple[asyncio.Task[Summary], asyncio.Future[bool]]:
    """``events`` written as a batch on ``conn`` after a previous batch (the future's outcome)."""
    writer = BatchWriter("g", "t")
    batch = summarize(events, None)
    await writer.ensure_partitions(conn, hours(batch))
    before: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    return asyncio.create_task(writer.write(conn, batch, {0: offset}, after=before)), before


async def test_a_batch_commits_only_after_the_one_before_it(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The consumer writes a batch's ledger while the one before it finishes: its offsets and
    sums wait until that one has committed."""
    other = await asyncpg.connect(database_url)
    try:
        pending, before = await _write_after(other, [ev("b"), ev("c")], 9)
        await asyncio.sleep(0.3)
        assert not pending.done()
        assert await _offsets(db) == []  # nothing of the second batch is visible yet
        await write(db, [ev("a")], offsets={0: 5})
        before.set_result(True)
        assert (await asyncio.wait_for(pending, 10)).txn_ids() == ["b", "c"]
    finally:
        await other.close()
    assert await _offsets(db) == [9]
    assert await db.fetchval("SELECT sum(tx_count) FROM txn_hourly_agg") == 3


async def test_a_batch_rolls_back_when_the_one_before_it_was_not_written(
    db: asyncpg.Connection, database_url: str
) -> None:
    other = await asyncpg.connect(database_url)
    try:
        pending, before = await _write_after(other, [ev("b")], 9)
        await asyncio.sleep(0.2)
        before.set_result(False)
        with pytest.raises(PreviousBatchNotWritten):
            await asyncio.wait_for(pending, 10)
    finally:
        await other.close()
    # Its ledger rows went with the rollback: the batch is read again and counted then.
    assert await db.fetchval("SELECT count(*) FROM ingested_transactions") == 0
    assert await _offsets(db) == []
    assert await db.fetchval("SELECT count(*) FROM txn_hourly_agg") == 0
