"""A conflicting duplicate (same txn_id, other content) goes to the DLQ as
``conflicting_duplicate``; the first copy stays counted. Plain duplicates stay silent."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import asyncpg
from helpers.ingest import (
    Stack,
    assert_totals_match_source,
    counted,
    insert_source,
    make_events,
    publish,
    read_topic,
    running_consumer,
    wait_until,
)

from molam_workloads.core.events import TxnStatus, encode_event
from molam_workloads.ingest.aggregation import summarize


async def _consumed(db: asyncpg.Connection, topic: str, n: int) -> bool:
    total = await db.fetchval(
        "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE topic = $1", topic
    )
    return bool(total == n)


async def test_conflicting_duplicates_are_dead_lettered_and_the_first_copy_counts(
    stack: Stack, db: asyncpg.Connection
) -> None:
    events = make_events(40, seed=81)
    await insert_source(db, events)  # the originals: what the totals must equal
    e = events
    # In the first batch, after the originals: a copy of e[0] with another amount (conflict in
    # the batch) and a plain copy of e[1] (a duplicate, silent).
    first = [encode_event(x) for x in e] + [
        encode_event(e[0].model_copy(update={"amount": e[0].amount + Decimal("1.00")})),
        encode_event(e[1]),
    ]
    # A later batch, against the ledger: e[2] with another amount, e[4] with another status,
    # e[5] under a new event id but the same content (a plain duplicate), e[3] as it was.
    other_status = TxnStatus.failed if e[4].status != TxnStatus.failed else TxnStatus.succeeded
    later = [
        encode_event(e[2].model_copy(update={"amount": e[2].amount * 2})),
        encode_event(e[4].model_copy(update={"status": other_status})),
        encode_event(e[5].model_copy(update={"event_id": "another-event-id"})),
        encode_event(e[3]),
    ]
    await publish(stack.bootstrap, stack.topic, first)
    async with running_consumer() as ingestor:
        await wait_until(lambda: _consumed(db, stack.topic, len(first)))
        await publish(stack.bootstrap, stack.topic, later)
        await wait_until(lambda: _consumed(db, stack.topic, len(first) + len(later)))
    assert await counted(db) == len(events)
    await assert_totals_match_source(db)  # the first copies' amounts and statuses
    letters = [json.loads(v) for v in await read_topic(stack.bootstrap, stack.dlq, 3)]
    assert sorted((d["reason"], json.loads(d["original_text"])["txn_id"]) for d in letters) == [
        ("conflicting_duplicate", e[0].txn_id),
        ("conflicting_duplicate", e[2].txn_id),
        ("conflicting_duplicate", e[4].txn_id),
    ]
    assert len(await read_topic(stack.bootstrap, stack.dlq, 4, timeout=3)) == 3  # no more
    assert ingestor.totals["dead"] == 3
    assert ingestor.totals["duplicates"] == 3  # e[1], e[5], e[3]


def test_a_summary_names_the_transactions_another_took_with_other_content() -> None:
    # What commit() checks while the batch before it is still writing (its transactions are
    # left to it, so the ledger never sees this batch's copies of them).
    e = make_events(4, seed=82)
    older = summarize(e[:3], None)
    newer = summarize(
        [
            e[0],  # the same: a plain duplicate
            e[1].model_copy(update={"fee": e[1].fee + Decimal("0.01")}),
            e[2].model_copy(update={"occurred_at": e[2].occurred_at - timedelta(seconds=1)}),
            e[3],  # new
        ],
        None,
    )
    assert newer.conflicts(older) == [e[1].txn_id, e[2].txn_id]
    assert older.conflicts(older) == []
