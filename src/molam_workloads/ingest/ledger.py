"""Retention of the exactly-once ledger (``ingested_transactions``), by ``LEDGER_RETENTION_DAYS``.

The ledger keeps one row per transaction ever counted, so that a copy arriving later is
recognised. With a retention of N days the consumer refuses events older than N days (to the
DLQ, ``beyond_ledger_retention``: their copies could no longer be recognised; backfill is the
way to count such history) and deletes ledger rows older than N days plus ``TRIM_MARGIN``. The
margin covers a batch decoded just before a trim and clocks that disagree between replicas:
a row is only deleted once no replica can still accept its transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from molam_workloads.core.db import delete_in_chunks

TRIM_MARGIN = timedelta(days=1)
# Rows deleted per statement: short transactions that never hold a batch's write up for long.
TRIM_CHUNK = 10_000
# How often a consumer looks for expired rows (every replica does; deleting is idempotent).
TRIM_EVERY_SECONDS = 3600.0

_TRIM_SQL = """
DELETE FROM ingested_transactions
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ingested_transactions WHERE occurred_at < $1 LIMIT $2))
"""


def oldest_accepted(now: datetime, days: int) -> datetime | None:
    """Events before this go to the DLQ; None when the ledger keeps everything."""
    return now - timedelta(days=days) if days > 0 else None


def trim_before(now: datetime, days: int) -> datetime:
    """Ledger rows before this may be deleted (``days`` > 0)."""
    return now - timedelta(days=days) - TRIM_MARGIN


async def trim(pool: asyncpg.Pool, before: datetime) -> int:
    """Delete the ledger rows of transactions that occurred before ``before``; how many."""
    return await delete_in_chunks(pool, _TRIM_SQL, before, TRIM_CHUNK)
