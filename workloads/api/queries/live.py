"""Today's live counters from PostgreSQL, for when the Redis hash is missing (``core.live``
is the reader the consumer uses too, so both give the same fields)."""

from __future__ import annotations

from datetime import date

from molam_workloads.api.queries import Conn
from molam_workloads.core.live import read_totals


async def live_from_db(
    conn: Conn, merchant_id: str | None, day: date, reporting: str
) -> dict[str, str]:
    if merchant_id is None:
        return (await read_totals(conn, day, (), reporting))[None]
    totals = await read_totals(conn, day, (merchant_id,), reporting, platform=False)
    return totals[merchant_id]
