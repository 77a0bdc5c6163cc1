"""Kept merchant rankings (migration 140, ``core.ranks``): a merchant ranking over whole-day
blocks finds the same merchants, in the same order, with the same sums, as ranking every
merchant; the blocks hold what the hourly rows give; a rebuild after changes equals a full one.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from molam_workloads.api.queries import aggregates, prefix
from molam_workloads.api.queries.aggregates import Filters, Key, Ranking, grouped
from molam_workloads.core import ranks

from .seed import hourly, insert_hourly

T0 = datetime(2025, 7, 1, tzinfo=UTC)
H = timedelta(hours=1)
DAYS = 14
CUTOFF = T0 + timedelta(days=12, hours=10)
QUOTE = "USD"
MERCHANT = (Key("key", "merchant_id", "merchant_id"),)
MARKETS = [("SN", "XOF"), ("US", "USD"), ("FR", "EUR"), ("FR", "ZZZ")]  # ZZZ: no rate at all
RATES = [(date(2025, 7, 2) + timedelta(days=i), "XOF", Decimal(f"0.0016{i}")) for i in range(6)]
RATES.append((date(2025, 7, 5), "EUR", Decimal("1.1")))


@pytest.fixture(autouse=True)
def few_merchants_pay_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lists are tried whatever the number of merchants (``ranks.PAYS_OFF``, tested on
    its own below): these datasets hold tens of merchants, not thousands."""
    monkeypatch.setattr(ranks, "PAYS_OFF", 0)


class Counting:
    """A connection that counts its ``fetch`` calls: one per statement of ``grouped``."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn, self.fetches, self.texts = conn, 0, []

    async def fetch(self, *args: Any) -> list[asyncpg.Record]:
        self.fetches += 1
        self.texts.append(args[0])
        return await self.conn.fetch(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def make_rows(merchants: int, seed: int) -> list[dict[str, Any]]:
    """Merchants of nine sizes (many alike), in one or two markets, rows in a third of hours."""
    rnd = random.Random(seed)
    rows = []
    for i in range(merchants):
        weight = 1 + i % 9
        cells = [MARKETS[i % 4]] + ([MARKETS[(i + 1) % 4]] if i % 5 == 0 else [])
        for h in range(DAYS * 24):
            for country, currency in cells:
                if rnd.random() < 0.3:
                    ok = rnd.randint(0, 4 * weight)
                    rows.append(
                        hourly(T0 + h * H, f"M-{i:03d}" if i else None, country=country,
                               currency=currency, tx_count=ok + rnd.randint(0, 2),
                               succeeded_count=ok, payment_count=ok,
                               payment_volume_local=Decimal(rnd.randint(0, 90_000 * weight)) / 100,
                               fee_local=Decimal(rnd.randint(0, 999)) / 100)
                    )  # fmt: skip
    return rows


async def build(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    await conn.execute(
        "SELECT ensure_txn_hourly_partitions($1, $2)", T0 - timedelta(days=3), T0 + 30 * 24 * H
    )
    await conn.executemany(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ($1, $2, 'USD', $3)", RATES
    )
    await insert_hourly(conn, rows)
    await rebuild(conn)


async def rebuild(conn: asyncpg.Connection) -> int:
    async with conn.transaction():
        await conn.execute(
            "SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF
        )
        return await ranks.rebuild(conn)


async def every_merchant(
    conn: asyncpg.Connection, start: datetime, end: datetime, ranking: Ranking, named: bool
) -> list[tuple[Any, ...]]:
    """The ranking over every merchant (``grouped``'s path without kept blocks, which
    tests/workloads/api/test_prefix.py checks against sums computed in Python)."""
    state = await prefix.state(conn, QUOTE)
    result, _ = await aggregates._grouped_with(
        conn, state, start=start, end=end, filters=Filters(), keys=MERCHANT,
        reporting_currency=QUOTE, per_merchant=True, named_merchants_only=named, ranking=ranking,
    )  # fmt: skip
    return rows_of(result.rows)


def rows_of(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    names = ("key", "tx_count", "succeeded_count", "payment_count", "gross_volume", "fees")
    return [tuple(r[n] for n in names) for r in rows]


async def ranked(
    conn: asyncpg.Connection, start: datetime, end: datetime, ranking: Ranking, named: bool
) -> tuple[list[tuple[Any, ...]], int]:
    """``grouped``'s ranking (kept blocks first) and how many statements it ran."""
    counting = Counting(conn)
    result = await grouped(
        counting, start=start, end=end, filters=Filters(), keys=MERCHANT,  # type: ignore[arg-type]
        reporting_currency=QUOTE, per_merchant=True, named_merchants_only=named, ranking=ranking,
    )  # fmt: skip
    assert counting.fetches == 1 or "prb AS" in counting.texts[0]
    return rows_of(result.rows), counting.fetches


async def test_rankings_from_kept_blocks_equal_ranking_every_merchant(
    db: asyncpg.Connection,
) -> None:
    """Random ranges (partial first and last days, ranges starting before the data, reaching
    past the cutoff), both rankings, several limits, with and without the rows that have no
    merchant: the same rows as ranking every merchant. Both outcomes of the bound occur: the
    candidates' answer kept (one statement) and, when it cannot be shown first, every merchant
    ranked after it (two)."""
    await build(db, make_rows(160, 5))
    rnd = random.Random(9)
    outcomes = {1: 0, 2: 0}
    for _ in range(160):
        start = T0 + rnd.randint(-30, DAYS * 24) * H + timedelta(minutes=rnd.choice((0, 0, 17)))
        end = start + rnd.randint(1, 24 * 12) * H
        ranking = Ranking(rnd.choice(("gross_volume", "tx_count")), rnd.choice((1, 3, 10, 20)))
        named = rnd.random() < 0.5
        got, statements = await ranked(db, start, end, ranking, named)
        assert got == await every_merchant(db, start, end, ranking, named), (start, end, ranking)
        if end <= CUTOFF and start >= T0:
            outcomes[statements] += 1
    assert outcomes[1] >= 40 and outcomes[2] >= 3, outcomes


async def test_a_merchant_second_in_every_block_is_found(db: asyncpg.Connection) -> None:
    """The first merchants of each block differ, and the merchant that wins the range is only
    next after the candidates in each: it is no candidate, but the blocks' bound shows that a
    candidate's sum may be beaten, so every merchant is ranked and it wins."""
    day_a = T0 + 3 * 24 * H  # 2025-07-04 and 07-05: two blocks of one day (07-04 is odd)
    assert ranks.blocks(day_a.date(), day_a.date() + timedelta(days=2)) == [
        (day_a.date(), day_a.date() + timedelta(days=1)),
        (day_a.date() + timedelta(days=1), day_a.date() + timedelta(days=2)),
    ]
    depth = ranks.depth(1, 10**6)
    assert depth is not None
    rows = []
    for i in range(depth):
        for day, name in ((day_a, f"A-{i:03d}"), (day_a + 24 * H, f"B-{i:03d}")):
            rows.append(hourly(day + 5 * H, name, currency="USD", country="US", tx_count=1,
                               payment_count=1, payment_volume_local=1000 + i))  # fmt: skip
    for day in (day_a, day_a + 24 * H):
        rows.append(hourly(day + 7 * H, "Z", currency="USD", country="US", tx_count=1,
                           payment_count=1, payment_volume_local=999))  # fmt: skip
    await build(db, rows)
    ranking = Ranking("gross_volume", 1)
    got, statements = await ranked(db, day_a, day_a + 48 * H, ranking, True)
    assert got == await every_merchant(db, day_a, day_a + 48 * H, ranking, True)
    assert got[0][0] == "Z" and got[0][4] == Decimal(1998)
    assert statements == 2  # the candidates' first (B-099, 1099) could not be shown the first
    # One day alone: the candidates' answer holds
    got, statements = await ranked(db, day_a, day_a + 24 * H, ranking, True)
    assert [r[0] for r in got] == [f"A-{depth - 1:03d}"] and statements == 1


async def test_blocks_hold_the_first_merchants_of_their_days(db: asyncpg.Connection) -> None:
    """Each block lists its merchants by sum, largest first (ties by merchant), with the sums
    of the hourly rows of its days; a rebuild after late rows on old days, a deleted row and
    new FX rates gives the blocks a full build gives."""
    rows = make_rows(70, 11)
    await build(db, rows)
    blocks = await db.fetch(
        "SELECT measure, lo, hi, merchants, amounts FROM analytics_prefix_ranks"
        " ORDER BY hi - lo DESC, lo LIMIT 40"
    )
    assert blocks
    for b in blocks:
        start = datetime.combine(b["lo"], datetime.min.time(), UTC)
        end = datetime.combine(b["hi"], datetime.min.time(), UTC)
        state = await prefix.state(db, QUOTE)
        full, _ = await aggregates._grouped_with(
            db, state, start=start, end=end, filters=Filters(), keys=MERCHANT,
            reporting_currency=QUOTE, per_merchant=True,
        )  # fmt: skip
        column = b["measure"]
        sums = {(r["key"] or ""): r[column] for r in full.rows}
        want = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[: ranks.SIZE + 1]
        got = [(m, a) for m, a in zip(b["merchants"], b["amounts"], strict=True) if a]
        assert got == [(m, a) for m, a in want if a], (b["lo"], b["hi"], column)

    async def snapshot() -> list[tuple[Any, ...]]:
        return [
            tuple(r)
            for r in await db.fetch("SELECT * FROM analytics_prefix_ranks ORDER BY 1, 2, 3")
        ]

    async def full_rebuild_agrees() -> list[tuple[Any, ...]]:
        incremental = await snapshot()
        await db.execute("DELETE FROM analytics_prefix_ranks_state")
        await rebuild(db)
        assert incremental == await snapshot()
        return incremental

    # rows written more than an hour before the last build began: nothing to redo
    await db.execute("UPDATE txn_hourly_agg SET updated_at = updated_at - interval '3 hours'")
    assert await rebuild(db) == 0
    total = len(await snapshot())
    late = [
        hourly(T0 + 9 * 24 * H + 3 * H, "M-007", country="SN", tx_count=90, payment_count=90,
               payment_volume_local=Decimal("123456.78")),
        hourly(T0 + 10 * 24 * H + 1 * H, "M-099", country="US", currency="USD", tx_count=5,
               payment_count=5, payment_volume_local=Decimal(5)),
    ]  # fmt: skip
    await insert_hourly(db, late)
    await db.execute(
        "DELETE FROM txn_hourly_agg WHERE hour >= $1 AND hour < $2 AND merchant_id = 'M-003'",
        T0 + 9 * 24 * H,
        T0 + 10 * 24 * H,
    )
    assert 0 < await rebuild(db) < total  # the blocks from the changed days on
    before = await full_rebuild_agrees()
    await insert_hourly(db, [hourly(T0 + 26 * H, "M-012", tx_count=7, payment_count=7,
                                    payment_volume_local=Decimal("77.7"))])  # fmt: skip
    await rebuild(db)
    assert await full_rebuild_agrees() != before
    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ('2025-07-03', 'EUR', 'USD', 1.2)"
    )
    assert await rebuild(db) == total  # new rates: the totals are built again, and every block
    await full_rebuild_agrees()


async def test_blocks_are_used_only_with_the_totals_they_were_built_from(
    db: asyncpg.Connection,
) -> None:
    """Running totals rebuilt without the blocks (another build since), or hourly rows that
    may hold a negative measure (the constraint not validated): every merchant is ranked. A
    negative measure is refused."""
    await build(db, make_rows(60, 3))
    start, end = T0 + 2 * 24 * H + 5 * H, T0 + 9 * 24 * H + 2 * H
    ranking = Ranking("gross_volume", 3)
    assert (await ranked(db, start, end, ranking, False))[1] == 1
    with pytest.raises(asyncpg.CheckViolationError):
        await insert_hourly(db, [hourly(T0 + H, "M-001", payment_volume_local=-1)])

    await insert_hourly(db, [hourly(T0 + 3 * 24 * H, "M-050", tx_count=1, payment_count=1,
                                    payment_volume_local=10**9)])  # fmt: skip
    await db.execute("SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF)
    got, statements = await ranked(db, start, end, ranking, False)
    assert statements == 2 and got[0][0] == "M-050"
    assert got == await every_merchant(db, start, end, ranking, False)

    await db.execute(
        "ALTER TABLE txn_hourly_agg DROP CONSTRAINT txn_hourly_agg_ranked_nonnegative;"
        " ALTER TABLE txn_hourly_agg ADD CONSTRAINT txn_hourly_agg_ranked_nonnegative"
        " CHECK (tx_count >= 0) NOT VALID"
    )
    assert await rebuild(db) == 0
    assert not await db.fetchval("SELECT count(*) FROM analytics_prefix_ranks")
    got, statements = await ranked(db, start, end, ranking, False)
    assert statements == 2 and got == await every_merchant(db, start, end, ranking, False)


async def test_the_lists_are_tried_only_where_merchants_outnumber_the_candidates(
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 60 merchants and the lists' own rule, a ranking of 10 ranks every merchant at
    once; with the rule at 0, the candidates first."""
    await build(db, make_rows(60, 3))
    assert await db.fetchval("SELECT merchants FROM analytics_prefix_ranks_state") == 60
    start, end = T0 + 2 * 24 * H + 5 * H, T0 + 9 * 24 * H + 2 * H
    for pays_off, tried in ((8, False), (0, True)):
        monkeypatch.setattr(ranks, "PAYS_OFF", pays_off)
        counting = Counting(db)
        await grouped(
            counting, start=start, end=end, filters=Filters(), keys=MERCHANT,  # type: ignore[arg-type]
            reporting_currency=QUOTE, per_merchant=True, ranking=Ranking("gross_volume", 10),
        )  # fmt: skip
        assert ("prb AS" in counting.texts[0]) is tried
