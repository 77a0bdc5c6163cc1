"""Kept merchant rankings over blocks of whole UTC days (migration 140).

``refresh-views`` (re)builds them after the running totals, in the same transaction; the API
ranks merchants over a range from the blocks that cover it: the candidates are the first
merchants of each block, and every other merchant has at most the sum of the blocks' next
amounts (docs/decisions/031-merchant-ranking-lists.md).
"""

from __future__ import annotations

from datetime import date, timedelta

import asyncpg

# Merchants kept per block and measure (with the sum of the one after them): enough for the
# first 100 (the breakdown's default limit) to be found among them.
SIZE = 200
# Blocks of 1, 2, 4 ... 2^LEVELS days: any range of up to ~22 years is a few dozen blocks.
LEVELS = 12
EPOCH = date(1970, 1, 1)
# The lists pay off only when merchants outnumber a ranking's candidates this many times: at
# 600 merchants, ~60 candidates saved a third of the statement's cost, ~130 nothing
# (docs/decisions/031-merchant-ranking-lists.md).
PAYS_OFF = 8


def blocks(first: date, end: date) -> list[tuple[date, date]]:
    """The blocks [lo, hi) that cover the days [first, end) exactly, in order, each as large
    as its start's alignment and the end allow: at most two per size."""
    out = []
    a, b = (first - EPOCH).days, (end - EPOCH).days
    while a < b:
        size = 1
        while size < 1 << LEVELS and a % (size * 2) == 0 and a + size * 2 <= b:
            size *= 2
        out.append((EPOCH + timedelta(days=a), EPOCH + timedelta(days=a + size)))
        a += size
    return out


def depth(limit: int, merchants: int) -> int | None:
    """How many of each block's merchants a ranking of the first ``limit`` out of
    ``merchants`` takes as candidates: several times the limit, so that the next amounts fall
    below the limit-th merchant's sum (docs/decisions/031-merchant-ranking-lists.md). None:
    the kept lists would not help (too long a ranking, too few merchants)."""
    n = min(SIZE, max(8 * limit, 100))
    return n if 2 * limit <= SIZE and merchants >= PAYS_OFF * n else None


async def rebuild(conn: asyncpg.Connection) -> int:
    """Rebuild the blocks whose sums may have changed since the last build; returns how
    many were (re)built. Run after ``analytics_rebuild_prefix_totals``, in its transaction."""
    return int(await conn.fetchval("SELECT analytics_rebuild_prefix_ranks($1, $2)", SIZE, LEVELS))
