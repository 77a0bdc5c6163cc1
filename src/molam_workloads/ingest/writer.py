"""The exactly-once write of one batch: ledger, aggregates and offsets in ONE transaction.

A crash before COMMIT leaves nothing behind (the batch is re-read from the stored offsets); a
crash after it leaves everything (the offsets already point past the batch). A transaction that
arrives again, however late, or that backfill already counted, is found in
``ingested_transactions`` and adds nothing: only the ledger's newly inserted ``txn_id`` values
are aggregated.

Batches travel as JSON documents (written by the compiled ``Summary``, read with
``jsonb_array_elements`` on the database's side), not as one parameter array per column:
asyncpg inspects every element of an array parameter for nesting, which cost the consumer
several times more CPU than the whole encoding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.core.db import INGEST_LOCK
from molam_workloads.core.measures import KEYS, MEASURES, MONEY_MEASURES
from molam_workloads.ingest.aggregation import Summary, hours, months

# Reads ``Summary.ledger_json()``. Returns the batch's transactions that were already in
# the ledger (usually none; an index probe each), so only the exceptions travel back, each with
# whether its stored copy's content differs (a conflicting duplicate), and inserts the others.
# A plain INSERT, not ON CONFLICT: should another consumer or backfill insert one of
# these ids meanwhile, the INSERT waits for it and fails with a unique violation, and
# ``BatchWriter.write`` runs the batch again, seeing it this time (cheaper than a speculative
# insertion per row). In txn_id order: two writers inserting overlapping ids lock them in the
# same order, so they wait for each other instead of deadlocking (any fixed order does; byte
# order, "C", is the cheapest to sort).
_LEDGER_SQL = """
WITH batch AS (
    SELECT r->>0 AS txn_id, r->>1 AS event_id, (r->>2)::timestamptz AS occurred_at,
        (r->>3)::bigint AS content_hash
    FROM jsonb_array_elements($1::jsonb) AS r),
seen AS MATERIALIZED (
    SELECT txn_id, content_hash FROM ingested_transactions
    WHERE txn_id = ANY ((SELECT array_agg(txn_id) FROM batch)::text[])),
ledger AS (
    INSERT INTO ingested_transactions (txn_id, event_id, occurred_at, source, content_hash)
    SELECT txn_id, event_id, occurred_at, 'stream', content_hash FROM batch b
    WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.txn_id = b.txn_id)
    ORDER BY txn_id COLLATE "C")
SELECT s.txn_id, coalesce(s.content_hash <> b.content_hash, false) AS conflict
FROM seen s JOIN batch b ON b.txn_id = s.txn_id
"""
_LEDGER_KEY = "ingested_transactions_pkey"
# A batch that keeps meeting concurrent inserts of its ids gives up after this many runs (the
# consumer then retries it like any failed write).
LEDGER_RACES = 5

# A connection of its own or one lent by the pool.
Conn = asyncpg.Connection | PoolConnectionProxy


def _upsert(table: str, time_column: str, param: int) -> str:
    """Add a batch's rows (``Summary.hourly_json()``/``minute_json()``: [bucket, keys...,
    measures...] arrays, parameter ``$param``) to ``table``."""
    keys = [time_column, *KEYS]
    types = ["timestamptz", *("text" for _ in KEYS)]
    types += ["numeric" if m in MONEY_MEASURES else "bigint" for m in MEASURES]
    cols = ", ".join(f"(r->>{i})::{t}" for i, t in enumerate(types))
    adds = ", ".join(f"{m} = {table}.{m} + EXCLUDED.{m}" for m in MEASURES)
    return (
        f"INSERT INTO {table} ({', '.join(keys + list(MEASURES))}) "
        f"SELECT {cols} FROM jsonb_array_elements(${param}::jsonb) AS r "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {adds}, updated_at = now()"
    )


# Everything after the ledger in ONE statement (one round trip): the hourly and minute rows
# (either may be empty) and the offsets. Data-modifying WITH clauses always run to completion,
# in one snapshot of the same transaction; the three touch different tables.
# Offsets only move forward: a consumer that lost its partitions mid-batch must not drag the
# new owner's progress back (the ledger would still keep the counts exact, but work would repeat).
_AGGREGATES_AND_OFFSETS_SQL = f"""
WITH hourly AS ({_upsert("txn_hourly_agg", "hour", 1)}),
minute AS ({_upsert("txn_minute_agg", "minute", 2)})
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
SELECT $3, $4, o.partition, o.next_offset
FROM unnest($5::int[], $6::bigint[]) AS o (partition, next_offset)
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


async def reset_offsets(conn: Conn, group: str, topic: str, offsets: Mapping[int, int]) -> None:
    """Set stored offsets to these values, backwards too: only after a partition's log was
    found to have lost what the stored offset points past (``ingest.offsets``)."""
    await conn.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
        " SELECT $1, $2, o.partition, o.next_offset"
        " FROM unnest($3::int[], $4::bigint[]) AS o (partition, next_offset)"
        " ON CONFLICT (consumer_group, topic, partition) DO UPDATE"
        " SET next_offset = EXCLUDED.next_offset, updated_at = now()",
        group,
        topic,
        list(offsets),
        list(offsets.values()),
    )


class PreviousBatchNotWritten(RuntimeError):
    """The batch before this one failed: this one rolls back too."""


class BatchWriter:
    """Writes batches for one consumer group and topic; remembers which partitions exist."""

    def __init__(self, group: str, topic: str) -> None:
        self.group = group
        self.topic = topic
        self._months: set[datetime] = set()

    async def ensure_partitions(self, conn: Conn, times: Iterable[datetime]) -> None:
        # Outside the batch transaction: the DDL locks the parent table, which must not stay
        # locked for a whole batch. Idempotent, so a race with another consumer is harmless.
        for month in sorted(months(times) - self._months):
            await conn.execute("SELECT ensure_txn_hourly_partitions($1, $1)", month)
            self._months.add(month)

    async def write(
        self,
        conn: Conn,
        batch: Summary,
        next_offsets: Mapping[int, int],
        after: Awaitable[bool] | None = None,
        on_conflicts: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> Summary:
        """Commit one batch; returns the part of it that was newly counted.

        ``on_conflicts``: awaited, before COMMIT, with the batch's transactions the ledger holds
        with other content (conflicting duplicates: not counted); a crash before COMMIT meets
        them again.

        ``after``: the previous batch's outcome (True once committed), when that batch is
        still being written. This one's ledger is written meanwhile, but its aggregates and
        offsets, and its COMMIT, only once the previous batch has committed: offsets never
        overtake a batch that might still fail. The caller leaves the previous batch's
        transactions out of this one (they are counted when it commits).
        """
        for run in range(1, LEDGER_RACES + 1):
            try:
                return await self._write_once(conn, batch, next_offsets, after, on_conflicts)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != _LEDGER_KEY or run == LEDGER_RACES:
                    raise
        raise AssertionError("unreachable")

    async def _write_once(
        self,
        conn: Conn,
        batch: Summary,
        next_offsets: Mapping[int, int],
        after: Awaitable[bool] | None,
        on_conflicts: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> Summary:
        async with conn.transaction():
            # Per-day shared locks, ascending (see core.db.INGEST_LOCK): backfill rebuilding
            # one of these days waits for this batch, or this batch for it.
            # Every event's UTC day is the day of its hourly bucket (far fewer than events).
            days = sorted({hour.date().toordinal() for hour in hours(batch)})
            await conn.execute(
                "SELECT count(pg_advisory_xact_lock_shared(hashtext($1), d))"
                " FROM unnest($2::int[]) AS d",
                INGEST_LOCK,
                days,
            )
            if len(batch):
                rows = await conn.fetch(_LEDGER_SQL, batch.ledger_json())
                if rows:
                    batch = batch.without({r[0] for r in rows})
                    conflicts = [r[0] for r in rows if r[1]]
                    if conflicts and on_conflicts is not None:
                        await on_conflicts(conflicts)
            # Encoded before waiting for the previous batch: the wait ends when it commits, and
            # PostgreSQL should get this batch's rows at once.
            hourly, minute = batch.hourly_json(), batch.minute_json()
            if after is not None and not await after:
                raise PreviousBatchNotWritten(
                    "the previous batch was not written: this one may not commit before it"
                )
            if len(batch) or next_offsets:
                await conn.execute(
                    _AGGREGATES_AND_OFFSETS_SQL,
                    hourly,
                    minute,
                    self.group,
                    self.topic,
                    list(next_offsets),
                    list(next_offsets.values()),
                )
        return batch
