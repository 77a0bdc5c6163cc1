"""Running totals (migration 070) give exactly what summing the hourly rows gives.

Random ranges, time zones, filters, groupings and late events, against a reference computed
in Python from the very rows inserted (Decimal, the rate of each row's UTC day).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molam_workloads.api.queries import prefix
from molam_workloads.api.queries.aggregates import (
    DAY_BUCKET,
    RANKINGS,
    Filters,
    Key,
    Ranking,
    grouped,
    top_merchants,
    utc_aligned,
)

from .seed import hourly

T0 = datetime(2025, 7, 1, tzinfo=UTC)
H = timedelta(hours=1)
DAYS = 9
CUTOFF = T0 + timedelta(days=6, hours=10)
QUOTE = "USD"
CELLS = [
    ("M-1", "SN", "XOF", "mobile_money"),
    ("M-1", "SN", "XOF", "card"),
    ("M-2", "FR", "EUR", "card"),
    ("M-2", "FR", "ZZZ", "card"),  # a currency without any rate
    ("M-3", "NG", "NGN", "mobile_money"),
    ("M-3", "US", "USD", "card"),
    (None, "SN", "XOF", "mobile_money"),
]
ZONES = ["UTC", "Africa/Dakar", "Europe/London", "Asia/Kolkata", "America/New_York"]
ZONES += ["Asia/Kathmandu", "Pacific/Chatham"]
DIMENSIONS = {
    "country": Key("key", "country::text", "country::text"),
    "channel": Key("key", "channel", "channel"),
    "currency": Key("key", "currency::text", "currency::text"),
    "merchant": Key("key", "merchant_id", "merchant_id"),
}
MEASURES = ("tx_count", "succeeded_count", "failed_count", "pending_count", "payment_count")
MEASURES += ("refund_count",)
CONVERTED = ("gross", "refunds", "fees")


def make_rows(seed: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for h in range(DAYS * 24):
        for merchant, country, currency, channel in CELLS:
            if rnd.random() < 0.35:
                ok, ko, pe = rnd.randint(0, 9), rnd.randint(0, 3), rnd.randint(0, 2)
                rows.append(
                    hourly(
                        T0 + h * H,
                        merchant,
                        country=country,
                        currency=currency,
                        channel=channel,
                        tx_count=ok + ko + pe,
                        succeeded_count=ok,
                        failed_count=ko,
                        pending_count=pe,
                        payment_count=rnd.randint(0, ok),
                        payment_volume_local=Decimal(rnd.randint(0, 900_000)) / 100,
                        refund_count=rnd.randint(0, 1),
                        refund_volume_local=Decimal(rnd.randint(0, 9_999)) / 100,
                        fee_local=Decimal(rnd.randint(0, 99_999)) / 10_000,
                    )
                )
    return rows


# Dated rates: XOF changes every day from 07-02, EUR once on 07-05 (the seed's 2024 rates hold
# before), so a range's days convert at different rates.
RATES = [(date(2025, 7, 2) + timedelta(days=i), "XOF", Decimal(f"0.0016{i}")) for i in range(5)]
RATES.append((date(2025, 7, 5), "EUR", Decimal("1.1")))


async def rate_table(conn: asyncpg.Connection) -> dict[str, list[tuple[date, Decimal]]]:
    table: dict[str, list[tuple[date, Decimal]]] = defaultdict(list)
    for r in await conn.fetch("SELECT currency, day, rate FROM fx_rates WHERE quote = $1", QUOTE):
        table[r["currency"].strip()].append((r["day"], r["rate"]))
    for v in table.values():
        v.sort()
    return table


def rate(rates: dict[str, list[tuple[date, Decimal]]], currency: str, day: date) -> Decimal | None:
    if currency == QUOTE:
        return Decimal(1)
    known = rates.get(currency)
    if not known:
        return None
    on_or_before = [r for d, r in known if d <= day]
    return on_or_before[-1] if on_or_before else known[0][1]


@dataclass(frozen=True)
class Query:
    start: datetime
    end: datetime
    filters: Filters
    grouping: str  # "", a dimension, or "day"
    tz: str


def reference(
    rows: list[dict[str, Any]], rates: dict[str, list[tuple[date, Decimal]]], q: Query
) -> tuple[dict[Any, dict[str, Any]], list[str]]:
    """Per group: the measures, money converted; and the currencies left unconverted."""
    per: dict[Any, dict[str, dict[str, Any]]] = defaultdict(dict)
    tz = ZoneInfo(q.tz)
    for r in rows:
        if not q.start <= r["hour"] < q.end:
            continue
        if any(v is not None and r[k] != v for k, v in q.filters.as_dict().items()):
            continue
        if q.grouping == "day":
            key: Any = r["hour"].astimezone(tz).date()
        elif q.grouping == "merchant":
            key = r["merchant_id"]
        elif q.grouping:
            key = r[q.grouping]
        else:
            key = None
        cur = per[key].setdefault(
            r["currency"],
            {m: 0 for m in MEASURES}
            | {"gross": Decimal(0), "refunds": Decimal(0)}
            | {"fees": Decimal(0), "converted": True},
        )
        for m in MEASURES:
            cur[m] += r[m]
        x = rate(rates, r["currency"], r["hour"].astimezone(UTC).date())
        if x is None:
            cur["converted"] = False
        else:
            cur["gross"] += r["payment_volume_local"] * x
            cur["refunds"] += r["refund_volume_local"] * x
            cur["fees"] += r["fee_local"] * x
    out = {}
    unconverted: set[str] = set()
    for key, currencies in per.items():
        total = {m: 0 for m in MEASURES} | {"gross": Decimal(0), "refunds": Decimal(0)}
        total["fees"] = Decimal(0)
        for currency, c in currencies.items():
            for m in ("tx_count", "succeeded_count", "failed_count", "pending_count"):
                total[m] += c[m]
            if c["converted"]:
                for m in ("payment_count", "refund_count", "gross", "refunds", "fees"):
                    total[m] += c[m]
            else:
                unconverted.add(currency)
        out[key] = total
    if not q.grouping:  # one answer, zeros when nothing is in range
        out.setdefault(None, {m: 0 for m in MEASURES} | dict.fromkeys(CONVERTED, Decimal(0)))
    return out, sorted(unconverted)


def as_groups(rows: list[asyncpg.Record], grouping: str) -> dict[Any, dict[str, Any]]:
    out = {}
    for r in rows:
        key = r["bucket"] if grouping == "day" else (r["key"] if grouping else None)
        out[key] = {m: r[m] for m in MEASURES} | {
            "gross": r["gross_volume"],
            "refunds": r["refund_volume"],
            "fees": r["fees"],
        }
    return out


async def run(conn: asyncpg.Connection, q: Query) -> tuple[dict[Any, dict[str, Any]], Any]:
    keys: tuple[Key, ...] = ()
    extra: tuple[str, ...] = ()
    mv_allowed = True
    if q.grouping == "day":
        keys = (Key("bucket", DAY_BUCKET, "day"),)
        extra = (q.tz,)
        mv_allowed = utc_aligned(ZoneInfo(q.tz), q.start, q.end)  # as the route does
    elif q.grouping:
        keys = (DIMENSIONS[q.grouping],)
    result = await grouped(
        conn,
        start=q.start,
        end=q.end,
        filters=q.filters,
        keys=keys,
        reporting_currency=QUOTE,
        mv_allowed=mv_allowed,
        extra_params=extra,
        per_merchant=q.grouping == "merchant",
    )
    return as_groups(result.rows, q.grouping), result


def moments() -> st.SearchStrategy[datetime]:
    hours = st.integers(min_value=-30, max_value=DAYS * 24 + 30)
    minutes = st.sampled_from([0, 0, 0, 30, 45])
    return st.builds(lambda h, m: T0 + h * H + timedelta(minutes=m), hours, minutes)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    a, b = draw(moments()), draw(moments())
    if a == b:
        b += H
    start, end = min(a, b), max(a, b)
    merchants = [c[0] for c in CELLS if c[0]]
    filters = Filters(
        merchant_id=draw(st.one_of(st.none(), st.none(), st.sampled_from(merchants))),
        country=draw(st.one_of(st.none(), st.none(), st.sampled_from(["SN", "FR", "NG"]))),
        channel=draw(st.one_of(st.none(), st.none(), st.sampled_from(["card", "mobile_money"]))),
        currency=draw(st.one_of(st.none(), st.none(), st.sampled_from(["XOF", "ZZZ", "USD"]))),
    )
    grouping = draw(st.sampled_from(["", "", "day", "day", *DIMENSIONS]))
    return Query(start, end, filters, grouping, draw(st.sampled_from(ZONES)))


def late_rows(first_hour: int = 0) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Up to 4 late hourly rows at hours ``first_hour``.. of the data (cells of CELLS)."""
    return st.lists(
        st.builds(
            lambda h, cell, n, v: hourly(
                T0 + h * H,
                cell[0],
                country=cell[1],
                currency=cell[2],
                channel=cell[3],
                tx_count=n,
                succeeded_count=n,
                payment_count=n,
                payment_volume_local=Decimal(v) / 100,
            ),
            st.integers(min_value=first_hour, max_value=DAYS * 24 - 1),
            st.sampled_from(CELLS),
            st.integers(min_value=1, max_value=5),
            st.integers(min_value=1, max_value=10**7),
        ),
        max_size=4,
    )


UPSERT = (
    "INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count, "
    "succeeded_count, payment_count, payment_volume_local) VALUES ($1, $2, $3, $4, $5, $6, $7, "
    "$8, $9) ON CONFLICT (hour, merchant_id, country, currency, channel) DO UPDATE SET "
    "tx_count = txn_hourly_agg.tx_count + excluded.tx_count, "
    "succeeded_count = txn_hourly_agg.succeeded_count + excluded.succeeded_count, "
    "payment_count = txn_hourly_agg.payment_count + excluded.payment_count, "
    "payment_volume_local = txn_hourly_agg.payment_volume_local + excluded.payment_volume_local"
)


async def upsert_late(conn: asyncpg.Connection, late: list[dict[str, Any]]) -> None:
    """``late`` written as the consumer writes a batch: added to the hourly rows."""
    await conn.executemany(
        UPSERT,
        [
            (
                r["hour"],
                r["merchant_id"],
                r["country"],
                r["currency"],
                r["channel"],
                r["tx_count"],
                r["succeeded_count"],
                r["payment_count"],
                r["payment_volume_local"],
            )
            for r in late
        ],
    )


def add_late(rows: list[dict[str, Any]], late: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``late`` added as the consumer's upsert adds them."""
    index = {
        (r["hour"], r["merchant_id"], r["country"], r["currency"], r["channel"]): r for r in rows
    }
    out = [dict(r) for r in rows]
    by_key = {k: out[i] for i, k in enumerate(index)}
    for r in late:
        k = (r["hour"], r["merchant_id"], r["country"], r["currency"], r["channel"])
        if k in by_key:
            for m in ("tx_count", "succeeded_count", "payment_count", "payment_volume_local"):
                by_key[k][m] += r[m]
        else:
            by_key[k] = dict(r)
            out.append(by_key[k])
    return out


async def setup(dsn: str) -> tuple[list[dict[str, Any]], dict[str, list[tuple[date, Decimal]]]]:
    rows = make_rows(17)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SELECT ensure_txn_hourly_partitions($1, $2)", T0 - timedelta(days=3), T0 + 20 * H * 24
        )
        await conn.executemany(
            "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ($1, $2, 'USD', $3)", RATES
        )
        from .seed import insert_hourly

        await insert_hourly(conn, rows)
        await conn.execute(
            "SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF
        )
        return rows, await rate_table(conn)
    finally:
        await conn.close()


class Dataset(tuple[str, list[dict[str, Any]], Any]):
    def __repr__(self) -> str:
        return f"<{len(self[1])} hourly rows>"


@pytest.fixture
def dataset(database_url: str) -> Iterator[Dataset]:
    rows, rates = asyncio.run(setup(database_url))
    yield Dataset((database_url, rows, rates))


@asynccontextmanager
async def rolled_back(
    dsn: str, isolation: str = "read_committed"
) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction rolled back at the end: late rows and rebuilds made in it
    leave the dataset as it was for the next example."""
    conn = await asyncpg.connect(dsn)
    tr = conn.transaction(isolation=isolation)
    await tr.start()
    try:
        yield conn
    finally:
        await tr.rollback()
        await conn.close()


def check(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]], q: Query) -> None:
    assert got.keys() == want.keys(), q
    for key, w in want.items():
        assert got[key] == w, (q, key)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(q=queries(), late=late_rows())
def test_running_totals_equal_the_hourly_sums(
    dataset: Dataset, q: Query, late: list[dict[str, Any]]
) -> None:
    dsn, rows, rates = dataset

    async def body() -> None:
        async with rolled_back(dsn) as conn:
            got, result = await run(conn, q)
            if result.daily_days:  # some whole days were answered by running totals
                assert result.daily_source in (prefix.HOURLY, prefix.DAILY)
            want, unconverted = reference(rows, rates, q)
            check(got, want, q)
            assert result.unconverted == unconverted
            assert result.data_as_of is not None
            if late:  # late events, then the refresh's rebuild: exact again
                await upsert_late(conn, late)
                await conn.execute(
                    "SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF
                )
                got, _ = await run(conn, q)
                want, _ = reference(add_late(rows, late), rates, q)
                check(got, want, q)

    asyncio.run(body())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(q=queries(), by=st.sampled_from(["gross_volume", "tx_count"]), late=late_rows())
def test_top_merchants_from_running_totals(
    dataset: Dataset, q: Query, by: str, late: list[dict[str, Any]]
) -> None:
    """The route's filters (country, channel, currency), before and after late events and the
    refresh's rebuild."""
    dsn, rows, rates = dataset
    f = q.filters
    filters = Filters(country=f.country, channel=f.channel, currency=f.currency)
    q = Query(q.start, q.end, filters, "merchant", "UTC")
    measure, other = ("gross", "tx_count") if by == "gross_volume" else ("tx_count", "gross")

    def expected(data: list[dict[str, Any]]) -> tuple[list[str], dict[Any, dict[str, Any]]]:
        want, _ = reference(data, rates, q)
        want.pop(None, None)  # ranks named merchants only
        ranked = sorted(want, key=lambda m: (-want[m][measure], -want[m][other], m))[:2]
        return ranked, {m: want[m] for m in ranked}

    async def ask(conn: asyncpg.Connection, data: list[dict[str, Any]]) -> None:
        ranked, want = expected(data)
        result = await top_merchants(
            conn,
            start=q.start,
            end=q.end,
            filters=filters,
            reporting_currency=QUOTE,
            by=by,
            limit=2,
        )
        assert [r["merchant_id"] for r in result.rows] == ranked, q
        got = {r["merchant_id"]: as_groups([r], "")[None] for r in result.rows}
        check(got, want, q)

    async def body() -> None:
        # one snapshot, as the route reads
        async with rolled_back(dsn, isolation="repeatable_read") as conn:
            await ask(conn, rows)
            if late:  # late events, then the refresh's rebuild: exact again
                await upsert_late(conn, late)
                await conn.execute(
                    "SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF
                )
                await ask(conn, add_late(rows, late))

    asyncio.run(body())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(q=queries(), late=late_rows(first_hour=int((CUTOFF - T0) / H)))
def test_late_events_after_the_cutoff_count_without_a_rebuild(
    dataset: Dataset, q: Query, late: list[dict[str, Any]]
) -> None:
    """Hours at or after the totals' cutoff are read from the hourly rows: a late event there
    is in every figure at once, with the totals as they were built."""
    dsn, rows, rates = dataset

    async def body() -> None:
        async with rolled_back(dsn) as conn:
            await upsert_late(conn, late)
            got, result = await run(conn, q)
            want, unconverted = reference(add_late(rows, late), rates, q)
            check(got, want, q)
            assert result.unconverted == unconverted

    asyncio.run(body())


async def check_ranked(
    conn: asyncpg.Connection,
    q: Query,
    ranking: Ranking,
    data: list[dict[str, Any]],
    rates: dict[str, list[tuple[date, Decimal]]],
) -> None:
    """The breakdown by merchant ranked by ``ranking``: the first merchants of the reference
    by the ranking's sums, then key (no merchant last), each with every sum."""
    result = await grouped(
        conn,
        start=q.start,
        end=q.end,
        filters=q.filters,
        keys=(DIMENSIONS["merchant"],),
        reporting_currency=QUOTE,
        per_merchant=True,
        ranking=ranking,
    )
    want, _ = reference(data, rates, q)
    measure, other = (
        ("gross", "tx_count") if ranking.by == "gross_volume" else ("tx_count", "gross")
    )
    ranked = sorted(want, key=lambda m: (-want[m][measure], -want[m][other], m is None, m or ""))[
        : ranking.limit
    ]
    assert [r["key"] for r in result.rows] == ranked, q
    check(as_groups(result.rows, "merchant"), {m: want[m] for m in ranked}, q)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    q=queries(),
    by=st.sampled_from(sorted(RANKINGS)),
    limit=st.integers(min_value=1, max_value=3),
    late=late_rows(first_hour=int((CUTOFF - T0) / H)),
)
def test_a_merchant_ranking_sums_its_winners_alone(
    dataset: Dataset, q: Query, by: str, limit: int, late: list[dict[str, Any]]
) -> None:
    """The breakdown by merchant, first ``limit`` by a ranking: the merchants are ranked on the
    ranking's sums alone, then summed in full; the same rows, in the same order, as ranking
    every merchant's full sums (the rows without merchant included, whose key is null and
    comes last among ties), late events after the cutoff included."""
    dsn, rows, rates = dataset
    q = Query(q.start, q.end, q.filters, "merchant", "UTC")

    async def body() -> None:
        async with rolled_back(dsn) as conn:
            await upsert_late(conn, late)
            await check_ranked(conn, q, Ranking(by, limit), add_late(rows, late), rates)

    asyncio.run(body())


async def test_a_merchant_ranking_counts_what_decides_it(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Cases a random draw rarely meets. The hours after the cutoff can change who wins. A
    merchant with no row in range (but running totals, from earlier days) does not take the
    place of one whose volume in range is zero."""
    rows, rates = await setup(database_url)
    q = Query(T0 + 2 * 24 * H, CUTOFF + 20 * H, Filters(), "merchant", "UTC")

    async def ask(data: list[dict[str, Any]], limit: int) -> None:
        await check_ranked(db, q, Ranking("gross_volume", limit), data, rates)

    # the last merchant before the cutoff wins with its hours after it
    before, _ = reference(rows, rates, Query(q.start, CUTOFF, q.filters, "merchant", "UTC"))
    last = min((m for m in before if m), key=lambda m: before[m]["gross"])
    big = hourly(CUTOFF + 3 * H, last, country="US", currency="USD", channel="card",
                 tx_count=1, succeeded_count=1, payment_count=1,
                 payment_volume_local=Decimal(10**9))  # fmt: skip
    await upsert_late(db, [big])
    rows = add_late(rows, [big])
    await ask(rows, 1)

    # M-8 has a zero volume in range; M-9 has rows on the first day only; another
    # merchant's huge volume before the range changes nothing
    other = next(m for m in before if m and m != last)
    extra = [
        hourly(T0, "M-9", tx_count=1, succeeded_count=1, payment_volume_local=Decimal(5)),
        hourly(q.start + 5 * H, "M-8", tx_count=1),
        hourly(T0 + H, other, country="US", currency="USD", channel="card",
               tx_count=1, payment_volume_local=Decimal(10**12)),
    ]  # fmt: skip
    await upsert_late(db, extra)
    rows = add_late(rows, extra)
    await db.execute("SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF)
    active = reference(rows, rates, q)[0]
    assert "M-8" in active and "M-9" not in active
    await ask(rows, len(active))


async def test_sources_and_freshness(database_url: str, db: asyncpg.Connection) -> None:
    """Which table answers: the hourly totals for the platform, the daily ones for merchants'
    whole days, none for a currency they were not built for or after the rates change; hours
    at or after the cutoff come from hourly rows at once."""
    rows, _ = await setup(database_url)
    q = Query(T0 + 5 * H, T0 + timedelta(days=5, hours=3), Filters(), "", "UTC")
    _, platform = await run(db, q)
    assert platform.daily_source == prefix.HOURLY and platform.daily_days == 4
    assert platform.data_as_of == T0 + DAYS * 24 * H  # end of the newest hour (no minute rows)
    _, merchant = await run(db, Query(q.start, q.end, Filters(merchant_id="M-1"), "", "UTC"))
    assert merchant.daily_source == prefix.DAILY and merchant.daily_days == 4
    # a merchant's days in a zone whose midnights are not UTC ones: within-day totals too
    india = Query(q.start, q.end, Filters(merchant_id="M-1"), "day", "Asia/Kolkata")
    got, by_day = await run(db, india)
    assert by_day.daily_source == prefix.DAILY
    assert got == reference(rows, await rate_table(db), india)[0]

    # totals built before migration 100 (no within-day ones): merchants are read as before
    await db.execute("UPDATE analytics_prefix_state SET intraday_rows = NULL")
    assert (await prefix.state(db, QUOTE)).cutoff_for(merchants=True) is None
    old, before_100 = await run(db, india)
    assert before_100.daily_source != prefix.DAILY and old == got
    await db.execute("UPDATE analytics_prefix_state SET intraday_rows = 0")

    # an event at the cutoff's hour, late: counted at once, without a rebuild
    late = Query(T0, T0 + DAYS * 24 * H, Filters(), "", "UTC")
    before, _ = await run(db, late)
    await db.execute(UPSERT, CUTOFF, "M-1", "SN", "XOF", "card", 7, 7, 7, Decimal("1"))
    after, _ = await run(db, late)
    assert after[None]["tx_count"] == before[None]["tx_count"] + 7

    # new rates: the totals were converted with the old ones, so they are not used
    assert (await prefix.state(db, QUOTE)).cutoff == CUTOFF
    assert (await prefix.state(db, "EUR")).cutoff is None
    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES "
        "('2025-07-03', 'NGN', 'USD', 0.0007)"
    )
    assert (await prefix.state(db, QUOTE)).cutoff is None
    # a query planned with the state last seen (the totals usable) finds it changed in its
    # answer, and is planned again: figures at the new rate
    at_cutoff = hourly(CUTOFF, "M-1", channel="card", tx_count=7, succeeded_count=7)
    at_cutoff |= {"payment_count": 7, "payment_volume_local": Decimal("1")}
    for asked in (late, Query(q.start, q.end, Filters(), "merchant", "UTC")):
        got, result = await run(db, asked)
        assert result.daily_source not in (prefix.HOURLY, prefix.DAILY)
        want = reference(add_late(rows, [at_cutoff]), await rate_table(db), asked)[0]
        check(got, want, asked)


async def test_a_rebuild_redoes_only_the_days_that_changed(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Within-day totals are rebuilt per day: nothing when no hourly row changed, the one day
    of a deleted or a newly written row, every day when the rates change; exact each time."""
    rows, rates = await setup(database_url)
    held = await db.fetchval("SELECT count(*) FROM analytics_prefix_intraday_days")
    assert held == (CUTOFF - T0).days + 1  # the cutoff's day up to its hour

    async def rebuild_and_check(data: list[dict[str, Any]]) -> int:
        await db.execute("SELECT analytics_rebuild_prefix_totals($1, cutoff => $2)", QUOTE, CUTOFF)
        for q in (
            Query(T0 + 29 * H, T0 + 5 * 24 * H + 7 * H, Filters(), "merchant", "UTC"),
            Query(T0 + 2 * H, CUTOFF + 5 * H, Filters(merchant_id="M-3"), "day", "Asia/Kolkata"),
        ):
            got, result = await run(db, q)
            assert result.daily_source == prefix.DAILY
            check(got, reference(data, rates, q)[0], q)
        days: int = await db.fetchval("SELECT intraday_days FROM analytics_prefix_state")
        return days

    # rows written more than an hour before the last build began: nothing to redo
    await db.execute("UPDATE txn_hourly_agg SET updated_at = updated_at - interval '3 hours'")
    assert await rebuild_and_check(rows) == 0

    gone = next(r for r in rows if r["hour"] >= T0 + 3 * 24 * H and r["merchant_id"] == "M-3")
    await db.execute(
        "DELETE FROM txn_hourly_agg WHERE hour = $1 AND merchant_id = $2 AND country = $3"
        " AND currency = $4 AND channel = $5",
        *(gone[k] for k in ("hour", "merchant_id", "country", "currency", "channel")),
    )
    rows = [r for r in rows if r is not gone]
    assert await rebuild_and_check(rows) == 1

    # added to an existing row: the day's count of rows stays, only updated_at tells
    to = next(r for r in rows if r["hour"] >= T0 + 4 * 24 * H and r["currency"] == "EUR")
    late = [
        hourly(
            to["hour"],
            "M-2",
            country="FR",
            currency="EUR",
            channel="card",
            tx_count=3,
            succeeded_count=3,
            payment_count=2,
            payment_volume_local=Decimal("41.5"),
        )
    ]
    await upsert_late(db, late)  # as the consumer writes: updated_at = now()
    await db.execute(
        "UPDATE txn_hourly_agg SET updated_at = now() WHERE hour = $1", late[0]["hour"]
    )
    rows = add_late(rows, late)
    assert await rebuild_and_check(rows) == 1

    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate)"
        " VALUES ('2025-07-03', 'NGN', 'USD', 0.0007)"
    )
    rates = await rate_table(db)
    assert await rebuild_and_check(rows) == held


def test_day_boundaries_across_a_dst_change() -> None:
    tz = ZoneInfo("America/Havana")  # DST starts at midnight: 00:00 does not exist
    day = date(2025, 3, 9)
    h = prefix.first_hour_of(day, tz)
    assert h.astimezone(tz).date() == day
    assert (h - H).astimezone(tz).date() < day
