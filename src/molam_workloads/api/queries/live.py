"""Today's live counters from PostgreSQL, for when the Redis hash is missing (``core.live``
is the reader the consumer uses too, so both give the same fields)."""

from __future__ import annotations

from datetime import date

from molam_workloads.api.queries import Conn
from molam_workloads.core.live import OWNER_FIELD, owner_tag, read_totals


def counters_of(held: dict[str, str], merchant_id: str | None) -> dict[str, str]:
    """The counters of a stored hash if it is ``merchant_id``'s (None: the platform's), without
    its ``owner`` field; empty (missing) when the hash names another owner or none."""
    fields = dict(held)
    if fields.pop(OWNER_FIELD, None) != owner_tag(merchant_id):
        return {}
    return fields


async def live_from_db(
    conn: Conn, merchant_id: str | None, day: date, reporting: str
) -> dict[str, str]:
    merchants = () if merchant_id is None else (merchant_id,)
    totals = await read_totals(conn, day, merchants, reporting, platform=merchant_id is None)
    return counters_of(totals[merchant_id], merchant_id)
