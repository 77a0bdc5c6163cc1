"""The exactly-once write of one batch: ledger, aggregates and offsets in ONE transaction.

A crash before COMMIT leaves nothing behind (the batch is re-read from the stored offsets); a
crash after it leaves everything (the offsets already point past the batch). A transaction that
arrives again, however late, or that backfill already counted, conflicts in
``ingested_transactions`` and adds nothing: only the ledger's newly inserted ``txn_id`` values
are aggregated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.core.db import INGEST_LOCK
from molam_workloads.core.events import TransactionEvent
from molam_workloads.ingest.aggregation import MEASURES, MONEY_MEASURES, BatchAggregates, months

# Returns the batch's transactions that were already in the ledger (usually none), so only
# the exceptions travel back. Inserted in txn_id order: two consumers inserting overlapping
# ids lock them in the same order and wait for each other instead of deadlocking (the sort
# runs in PostgreSQL, off the consumer's core).
_LEDGER_SQL = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
        AS t (txn_id, event_id, occurred_at)),
fresh AS (
    INSERT INTO ingested_transactions (txn_id, event_id, occurred_at, source)
    SELECT txn_id, event_id, occurred_at, 'stream' FROM batch ORDER BY txn_id
    ON CONFLICT (txn_id) DO NOTHING
    RETURNING txn_id)
SELECT b.txn_id FROM batch b WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.txn_id = b.txn_id)
"""

# A connection of its own or one lent by the pool.
Conn = asyncpg.Connection | PoolConnectionProxy


def _upsert(table: str, time_column: str, first: int) -> str:
    """Add a batch's rows (column arrays from parameter ``$first`` on) to ``table``."""
    keys = [time_column, "merchant_id", "country", "currency", "channel"]
    types = ["timestamptz", "text", "text", "text", "text"]
    # Money arrives as exact decimal text (see aggregation.columns).
    types += ["text[]::numeric" if m in MONEY_MEASURES else "bigint" for m in MEASURES]
    params = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(types))
    adds = ", ".join(f"{m} = {table}.{m} + EXCLUDED.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {table} ({', '.join(keys + list(MEASURES))}) "
        f"SELECT * FROM unnest({params}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {adds}, updated_at = now()"
    )


_WIDTH = 5 + len(MEASURES)  # parameters (column arrays) of one aggregate table
_GROUP = 2 * _WIDTH + 1  # then the group, topic, partitions and next offsets

# Everything after the ledger in ONE statement (one round trip): the hourly and minute rows
# (either may be empty) and the offsets. Data-modifying WITH clauses always run to completion,
# in one snapshot of the same transaction; the three touch different tables.
# Offsets only move forward: a consumer that lost its partitions mid-batch must not drag the
# new owner's progress back (the ledger would still keep the counts exact, but work would repeat).
_AGGREGATES_AND_OFFSETS_SQL = f"""
WITH hourly AS ({_upsert("txn_hourly_agg", "hour", 1)}),
minute AS ({_upsert("txn_minute_agg", "minute", _WIDTH + 1)})
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
SELECT ${_GROUP}, ${_GROUP + 1}, o.partition, o.next_offset
FROM unnest(${_GROUP + 2}::int[], ${_GROUP + 3}::bigint[]) AS o (partition, next_offset)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
SET next_offset = EXCLUDED.next_offset, updated_at = now()
WHERE consumer_offsets.next_offset < EXCLUDED.next_offset
"""


async def load_offsets(
    conn: Conn, group: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """The stored next offset of each partition that has one."""
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM consumer_offsets"
        " WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3::int[])",
        group,
        topic,
        list(partitions),
    )
    return {r["partition"]: r["next_offset"] for r in rows}


class BatchWriter:
    """Writes batches for one consumer group and topic; remembers which partitions exist."""

    def __init__(self, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic
        self._months: set[datetime] = set()

    async def ensure_partitions(self, conn: Conn, hours: Iterable[datetime]) -> None:
        # Outside the batch transaction: the DDL locks the parent table, which must not stay
        # locked for a whole batch. Idempotent, so a race with another consumer is harmless.
        for month in sorted(months(hours) - self._months):
            await conn.execute("SELECT ensure_txn_hourly_partitions($1, $1)", month)
            self._months.add(month)

    async def write(
        self, conn: Conn, batch: BatchAggregates, next_offsets: Mapping[int, int]
    ) -> list[TransactionEvent]:
        """Commit one batch; returns the transactions it newly counted."""
        events = batch.events
        async with conn.transaction():
            # Per-day shared locks, ascending (see core.db.INGEST_LOCK): backfill rebuilding
            # one of these days waits for this batch, or this batch for it.
            # Every event's UTC day is the day of its hourly bucket (far fewer than events).
            days = sorted({key[0].date().toordinal() for key in batch.hourly})
            await conn.execute(
                "SELECT count(pg_advisory_xact_lock_shared(hashtext($1), d))"
                " FROM unnest($2::int[]) AS d",
                INGEST_LOCK,
                days,
            )
            if events:
                seen = {
                    r[0]
                    for r in await conn.fetch(
                        _LEDGER_SQL,
                        [e.txn_id for e in events],
                        [e.event_id for e in events],
                        [e.occurred_at for e in events],
                    )
                }
                if seen:
                    batch = batch.without([e for e in events if e.txn_id in seen])
            if batch.hourly or batch.minute or next_offsets:
                await conn.execute(
                    _AGGREGATES_AND_OFFSETS_SQL,
                    *batch.hourly_columns(),
                    *batch.minute_columns(),
                    self.group,
                    self.topic,
                    list(next_offsets),
                    list(next_offsets.values()),
                )
        return batch.events
