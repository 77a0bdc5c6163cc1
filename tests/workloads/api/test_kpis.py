"""KPI, time series, breakdown and top-merchant values against sums computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from redis.asyncio import Redis

from .conftest import Api
from .seed import hourly, insert_hourly

D1 = datetime(2025, 7, 1, tzinfo=UTC)
XOF_1 = Decimal("0.00165")  # the seeded rate (2024-01-01 onwards)
XOF_2 = Decimal("0.0017")  # a newer rate from 2025-07-02


async def seed(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ('2025-07-02', 'XOF', 'USD', $1)",
        XOF_2,
    )
    h = timedelta(hours=1)
    await insert_hourly(
        db,
        [
            # M-1, day 1, XOF and USD
            hourly(
                D1 + 10 * h,
                "M-1",
                tx_count=10,
                succeeded_count=7,
                failed_count=2,
                pending_count=1,
                gross_volume_local="12345",
                payment_count=5,
                payment_volume_local="10000",
                refund_count=1,
                refund_volume_local="1000",
                fee_local="100",
            ),
            hourly(
                D1 + 11 * h,
                "M-1",
                currency="USD",
                channel="card",
                tx_count=3,
                succeeded_count=3,
                gross_volume_local="50.50",
                payment_count=2,
                payment_volume_local="50.50",
                fee_local="1.25",
            ),
            # M-1, day 2 (new XOF rate)
            hourly(
                D1 + 30 * h,
                "M-1",
                tx_count=4,
                succeeded_count=2,
                failed_count=2,
                gross_volume_local="2000",
                payment_count=2,
                payment_volume_local="2000",
            ),
            # M-2 in CI, day 1; and a currency with no FX rate at all (JPY)
            hourly(
                D1 + 12 * h,
                "M-2",
                country="CI",
                tx_count=6,
                succeeded_count=6,
                gross_volume_local="6000",
                payment_count=6,
                payment_volume_local="6000",
                fee_local="60",
            ),
            hourly(
                D1 + 12 * h,
                "M-2",
                country="CI",
                currency="JPY",
                channel="card",
                tx_count=1,
                succeeded_count=1,
                gross_volume_local="900",
                payment_count=1,
                payment_volume_local="900",
            ),
            # outside the range [2025-07-01, 2025-07-03)
            hourly(
                D1 + 48 * h,
                "M-1",
                tx_count=99,
                succeeded_count=99,
                payment_count=99,
                payment_volume_local="99999",
            ),
        ],
    )


RANGE = "from=2025-07-01&to=2025-07-03"


async def test_kpis_match_hand_computed_sums(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    body = (await api.get(f"/v1/kpis?{RANGE}&merchant_id=M-1")).json()
    k = body["kpis"]
    gross = Decimal("10000") * XOF_1 + Decimal("50.50") + Decimal("2000") * XOF_2  # 16.5+50.5+3.4
    refunds = Decimal("1000") * XOF_1  # 1.65
    fees = Decimal("100") * XOF_1 + Decimal("1.25")  # 0.165 + 1.25
    assert k["tx_count"] == 17
    assert (k["succeeded_count"], k["failed_count"], k["pending_count"]) == (12, 4, 1)
    assert k["payment_count"] == 9
    assert Decimal(k["gross_volume"]) == gross.quantize(Decimal("0.01")) == Decimal("70.40")
    assert Decimal(k["refund_volume"]) == Decimal("1.65") and k["refund_count"] == 1
    assert Decimal(k["fees"]) == Decimal("1.42")  # 1.415 rounded half up
    assert Decimal(k["net_volume"]) == (gross - refunds - fees).quantize(Decimal("0.01"))
    assert k["success_rate"] == pytest.approx(12 / 16)
    assert k["failure_rate"] == 0.25  # 4 / (12 + 4)
    # 1 refund per 9 payments, from the exact quotient rounded to 6 decimals
    assert Decimal(str(k["refund_rate"])) == (Decimal(1) / 9).quantize(Decimal("0.000001"))
    assert Decimal(k["avg_ticket"]) == (gross / 9).quantize(Decimal("0.01"))
    assert isinstance(k["gross_volume"], str)  # amounts are decimal strings
    assert body["unconverted_currencies"] == []
    assert body["currency"] == "USD"


async def test_currency_without_rate_is_listed_not_summed(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    body = (await api.get(f"/v1/kpis?{RANGE}&merchant_id=M-2")).json()
    assert body["unconverted_currencies"] == ["JPY"]
    k = body["kpis"]
    assert k["tx_count"] == 7  # counts keep every transaction
    assert k["payment_count"] == 6  # money counts only what converts
    assert k["refund_rate"] == 0 and k["failure_rate"] == 0
    assert Decimal(k["gross_volume"]) == Decimal("9.90")  # 6000 XOF * 0.00165


async def test_filters(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    card = (await api.get(f"/v1/kpis?{RANGE}&channel=card")).json()["kpis"]
    assert card["tx_count"] == 4
    ci = (await api.get(f"/v1/kpis?{RANGE}&country=CI&currency=XOF")).json()["kpis"]
    assert ci["tx_count"] == 6 and Decimal(ci["fees"]) == Decimal("0.10")  # 0.099


async def test_timeseries_by_day_in_a_time_zone(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    # 2025-07-02 02:00Z is still 2025-07-01 (22:00) in New York (UTC-4 in July)
    await insert_hourly(db, [hourly(D1 + timedelta(hours=26), "M-9", tx_count=1)])
    utc = (await api.get(f"/v1/timeseries?{RANGE}&granularity=day")).json()
    assert [p["tx_count"] for p in utc["points"]] == [20, 5]
    assert utc["points"][0]["bucket"] == "2025-07-01T00:00:00Z"
    # from/to without offset are local: [07-01 04:00Z, 07-02 04:00Z)
    ny = (
        await api.get(
            "/v1/timeseries?from=2025-07-01&to=2025-07-02&granularity=day&tz=America/New_York"
        )
    ).json()
    assert [p["bucket"] for p in ny["points"]] == ["2025-07-01T00:00:00-04:00"]
    assert ny["points"][0]["tx_count"] == 21
    ny2 = (
        await api.get(
            "/v1/timeseries?from=2025-07-01T00:00:00Z&to=2025-07-03T00:00:00Z"
            "&granularity=day&tz=America/New_York"
        )
    ).json()
    # local days 06-30 (20:00-24:00 local: nothing), 07-01 (20 + the 02:00Z one), 07-02
    assert [p["tx_count"] for p in ny2["points"]] == [0, 21, 4]


async def test_timeseries_by_hour_fills_gaps(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    body = (
        await api.get("/v1/timeseries?from=2025-07-01T09:00Z&to=2025-07-01T13:00Z&granularity=hour")
    ).json()
    assert [p["tx_count"] for p in body["points"]] == [0, 10, 3, 7]
    # an empty hour: no quotient has a denominator
    rates = ("success_rate", "failure_rate", "refund_rate", "avg_ticket")
    assert [body["points"][0][r] for r in rates] == [None] * 4
    assert Decimal(body["points"][1]["gross_volume"]) == Decimal("16.50")


async def test_breakdowns_and_top_merchants(api: Api, db: asyncpg.Connection) -> None:
    await seed(db)
    by_country = (await api.get(f"/v1/breakdowns/country?{RANGE}")).json()
    assert {r["key"]: r["tx_count"] for r in by_country["rows"]} == {"SN": 17, "CI": 7}
    by_cur = (await api.get(f"/v1/breakdowns/currency?{RANGE}")).json()
    assert {r["key"]: r["gross_volume"] for r in by_cur["rows"]} == {
        "USD": "50.50",
        "XOF": "29.80",  # 16.5 + 3.4 + 9.9
        "JPY": "0.00",
    }
    assert by_cur["unconverted_currencies"] == ["JPY"]
    top = (await api.get(f"/v1/top-merchants?{RANGE}")).json()
    assert [(m["merchant_id"], m["gross_volume"]) for m in top["merchants"]] == [
        ("M-1", "70.40"),
        ("M-2", "9.90"),
    ]
    by_count = (await api.get(f"/v1/top-merchants?{RANGE}&by=tx_count&limit=1")).json()
    assert [m["merchant_id"] for m in by_count["merchants"]] == ["M-1"]


async def record_refresh(db: asyncpg.Connection) -> None:
    await db.execute("REFRESH MATERIALIZED VIEW mv_txn_daily_agg")
    await db.execute(
        "INSERT INTO analytics_view_refreshes (view_name, refreshed_at) "
        "VALUES ('mv_txn_daily_agg', clock_timestamp()) ON CONFLICT (view_name) DO UPDATE "
        "SET refreshed_at = clock_timestamp()"
    )


async def test_daily_sources_and_hourly_agree(
    api: Api, db: asyncpg.Connection, redis: Redis
) -> None:
    """Whole UTC days come from the daily view once refreshed (or from its merchant-less
    rollup once rebuilt from that refresh); partial days from hourly rows. Same answers."""
    await seed(db)
    urls = [
        "/v1/kpis?from=2025-06-30T22:00Z&to=2025-07-02T11:00Z&merchant_id=M-1",
        "/v1/kpis?from=2025-06-30T22:00Z&to=2025-07-02T11:00Z",
        "/v1/kpis?from=2025-07-01&to=2025-07-03&country=SN",
    ]
    hourly = [(await api.get(u)).json() for u in urls]
    assert [h["daily_view_days"] for h in hourly] == [0, 0, 0]

    await record_refresh(db)
    await redis.flushdb()  # cached answers would hide the change of source
    from_view = [(await api.get(u)).json() for u in urls]
    # the first request without merchant finds the rollup behind and asks for a rebuild, which
    # may be done by the time of the third request
    assert [v["daily_source"] for v in from_view][:2] == ["mv_txn_daily_agg"] * 2
    assert [v["daily_view_days"] for v in from_view] == [1, 1, 2]

    # the rollup was behind the view: the requests above asked for a rebuild
    await api.app.state.resources.rollup.wait()
    assert await db.fetchval("SELECT count(*) FROM analytics_daily_rollup") > 0
    await redis.flushdb()
    after = [(await api.get(u)).json() for u in urls]
    assert [a["daily_source"] for a in after] == [
        "mv_txn_daily_agg",  # a merchant filter: the rollup has no merchants
        "analytics_daily_rollup",
        "analytics_daily_rollup",
    ]
    for h, v, a in zip(hourly, from_view, after, strict=True):
        assert h["kpis"] == v["kpis"] == a["kpis"]
        assert (
            h["unconverted_currencies"]
            == v["unconverted_currencies"]
            == a["unconverted_currencies"]
        )
    # the 07-02 06:00 row is in the partial tail (until 11:00): 17 transactions for M-1
    assert after[0]["kpis"]["tx_count"] == 17

    # a newer refresh of the view: the rollup is behind again and not used until rebuilt
    await insert_hourly(db, [hourly_row := hourly_for_late_day()])
    await record_refresh(db)
    await redis.flushdb()
    late = (await api.get(urls[2])).json()
    assert late["daily_source"] == "mv_txn_daily_agg"
    assert late["kpis"]["tx_count"] == after[2]["kpis"]["tx_count"] + hourly_row["tx_count"]
    await api.app.state.resources.rollup.wait()
    await redis.flushdb()
    rebuilt = (await api.get(urls[2])).json()
    assert rebuilt["daily_source"] == "analytics_daily_rollup"
    assert rebuilt["kpis"] == late["kpis"]

    # a range of whole days only: every row from a daily table (the tz parameter unused)
    series = await api.get("/v1/timeseries?from=2025-07-01&to=2025-07-03&granularity=day")
    assert series.status_code == 200, series.text
    assert [p["tx_count"] for p in series.json()["points"]] == [20, 4 + 5]


def hourly_for_late_day() -> dict[str, object]:
    return hourly(D1 + timedelta(hours=40), "M-3", tx_count=5, succeeded_count=5)


@pytest.mark.parametrize(
    "query",
    [
        "from=2025-07-03&to=2025-07-01",
        "from=not-a-date",
        "tz=Mars/Olympus",
        "tz=../../etc/passwd",
        "country=sn",
        "currency=EURO",
        "from=2000-01-01&to=2025-01-01",
        "from=0001-01-01T00:00:00%2B14:00",
        "to=9999-12-31T23:59:59-14:00",
    ],
)
async def test_invalid_params_are_422(api: Api, query: str) -> None:
    r = await api.get(f"/v1/kpis?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


async def test_too_many_hourly_points_is_422(api: Api) -> None:
    r = await api.get("/v1/timeseries?from=2024-01-01&to=2025-01-01&granularity=hour")
    assert r.status_code == 422


class SqlSpy:
    """A connection that remembers the statements it ran."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        self.statements.append(sql)
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        self.statements.append(sql)
        return await self.conn.fetchrow(sql, *args)


async def test_top_merchants_ranks_first_like_one_full_query(db: asyncpg.Connection) -> None:
    """``top_merchants`` ranks on two measures, then sums everything for the winners: the same
    merchants, order and sums as ranking the full KPI query of every merchant (ties, a currency
    without rate, merchant-less rows, hours without volume, merchants in two currencies or starting
    late, daily view plus hourly edges included), whether whole days are ranked from the view
    or from the merchant running totals (current, then behind the view after a new refresh,
    then rebuilt)."""
    import random

    from molam_workloads.api.queries import rollup
    from molam_workloads.api.queries.aggregates import (
        RANKINGS,
        Filters,
        Key,
        grouped,
        plan_parts,
        top_merchants,
    )

    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES ('2025-07-03', 'XOF', 'USD', $1),"
        " ('2025-07-02', 'EUR', 'USD', 1.05), ('2025-07-04', 'EUR', 'USD', 1.11)",
        XOF_2,
    )
    rnd = random.Random(3)
    rows = []
    markets = [("SN", "XOF"), ("US", "USD"), ("JP", "JPY")]
    for m in range(30):
        country, currency = markets[m % 3]
        first = 0 if m < 24 else 24 * (m - 22)  # the last merchants start on days 2 to 7
        for h in range(first, 5 * 24, 5):
            # merchants 0 and 3 (and 1 and 4) get identical rows: ties on both measures
            r = random.Random(m % 3).random() if m < 6 else rnd.random()
            volume = Decimal(int(r * 100000)) / 100
            if m % 7 == 6 and h % 3 == 0:  # hours without payment volume
                volume = Decimal(0)
            cur = "EUR" if m % 5 == 2 and h % 2 else currency  # some in two currencies
            rows.append(
                hourly(
                    D1 + timedelta(hours=h),
                    f"M-{m:02d}" if m else None,
                    country=country,
                    currency=cur,
                    tx_count=1 + int(r * 20),
                    succeeded_count=int(r * 10),
                    payment_count=1,
                    payment_volume_local=str(volume),
                    gross_volume_local=str(volume),
                    fee_local="1.5",
                )
            )
    # Ranked first only through the day's rate: EUR 100,000 at 1.11 (USD 111,000) beats USD
    # 108,000, though not at EUR's lowest rate of most ranges (1.05): the upper bound keeps it.
    for merchant, currency, volume in (("M-90", "EUR", "100000"), ("M-91", "USD", "108000")):
        rows.append(
            hourly(
                D1 + timedelta(days=3, hours=2),
                merchant,
                currency=currency,
                tx_count=1,
                payment_count=1,
                payment_volume_local=volume,
            )
        )
    await insert_hourly(db, rows)
    await record_refresh(db)
    ranges = [
        (D1, D1 + timedelta(days=5)),
        (D1 + timedelta(hours=7), D1 + timedelta(days=3, hours=5)),
        (D1 + timedelta(hours=30), D1 + timedelta(hours=33)),
        (D1 + timedelta(days=1), D1 + timedelta(days=3)),  # whole days only
        (D1 - timedelta(days=2, hours=4), D1 + timedelta(days=2, hours=3)),  # before the data
        (D1 + timedelta(days=2, hours=9), D1 + timedelta(days=9)),  # after the data
        (D1 + timedelta(days=7), D1 + timedelta(days=8)),  # nothing
    ]

    async def assert_like_full_query(totals: bool) -> None:
        for start, end in ranges:
            for by in RANKINGS:
                for limit in (1, 3, 10, 100):
                    for filters in (Filters(), Filters(country="SN"), Filters(currency="JPY")):
                        spy = SqlSpy(db)
                        async with db.transaction(isolation="repeatable_read", readonly=True):
                            fast = await top_merchants(
                                spy,  # type: ignore[arg-type]
                                start=start,
                                end=end,
                                filters=filters,
                                reporting_currency="USD",
                                by=by,
                                limit=limit,
                            )
                        ranked_from_totals = any(
                            rollup.TOTALS_TABLE in sql for sql in spy.statements
                        )
                        refreshed = (await rollup.daily_sources(db)).view_refreshed_at
                        whole_days = any(
                            part.source == "daily"
                            for part in plan_parts(start, end, refreshed, mv_allowed=True)
                        )
                        assert ranked_from_totals == (
                            totals and filters == Filters() and whole_days
                        )
                        assert fast.rollup_behind == (not totals)
                        full = await grouped(
                            db,
                            start=start,
                            end=end,
                            filters=filters,
                            keys=(Key("merchant_id", "merchant_id", "merchant_id"),),
                            reporting_currency="USD",
                            per_merchant=True,
                            order_limit="HAVING g.merchant_id IS NOT NULL "
                            f"ORDER BY {RANKINGS[by]}, g.merchant_id LIMIT {limit:d}",
                        )
                        assert [dict(r) for r in fast.rows] == [dict(r) for r in full.rows]
                        assert fast.unconverted == full.unconverted

    await assert_like_full_query(totals=False)  # the totals were never built
    assert await rollup.rebuild(db)
    await assert_like_full_query(totals=True)
    # a late row, a new refresh: the totals are behind the view and left aside until rebuilt
    await insert_hourly(
        db,
        [
            hourly(
                D1 + timedelta(days=1, hours=2),
                "M-29",
                country="JP",
                currency="JPY",
                tx_count=500,
                payment_count=1,
                payment_volume_local="900000",
            ),
            hourly(
                D1 + timedelta(days=1, hours=3),
                "M-28",
                country="US",
                currency="USD",
                tx_count=1,
                payment_count=1,
                payment_volume_local="5000",
            ),
        ],
    )
    await record_refresh(db)
    await assert_like_full_query(totals=False)
    assert await rollup.rebuild(db)
    assert not await rollup.rebuild(db)  # nothing left to do
    await assert_like_full_query(totals=True)


async def test_merchant_totals_are_the_running_sums_of_the_view(db: asyncpg.Connection) -> None:
    """``analytics_rebuild_merchant_totals`` (migration 040): a row per (merchant, currency)
    and day from its first day to the view's last merchant day, with the running sums of its
    transactions and of its positive and negative days' payment volume (none is negative: the
    hourly rows' payment volumes are not, migration 140); recorded as built from the view's
    current refresh."""
    rows = [
        hourly(D1 + timedelta(hours=1), "M-1", tx_count=2, payment_volume_local="10.5"),
        hourly(
            D1 + timedelta(hours=2), "M-1", channel="card", tx_count=1, payment_volume_local="4"
        ),
        hourly(D1 + timedelta(hours=26), "M-1", tx_count=1, payment_volume_local="20"),
        hourly(
            D1 + timedelta(hours=27), "M-1", currency="USD", tx_count=3, payment_volume_local="7"
        ),
        hourly(D1 + timedelta(hours=75), "M-2", tx_count=4, payment_volume_local="1"),
        hourly(D1 + timedelta(hours=75), None, tx_count=9, payment_volume_local="100"),
    ]
    await insert_hourly(db, rows)
    assert await db.fetchval("SELECT analytics_rebuild_merchant_totals()") == 0  # no refresh
    await record_refresh(db)
    assert await db.fetchval("SELECT analytics_rebuild_merchant_totals()") == 3 + 4 + 1
    got = [
        tuple(r)
        for r in await db.fetch(
            "SELECT merchant_id, currency, day, tx_count, pos_volume, neg_volume "
            "FROM analytics_merchant_totals ORDER BY 1, 2, 3"
        )
    ]
    d = [(D1 + timedelta(days=i)).date() for i in range(4)]
    assert got == [
        ("M-1", "USD", d[1], 3, Decimal("7"), 0),
        ("M-1", "USD", d[2], 3, Decimal("7"), 0),
        ("M-1", "USD", d[3], 3, Decimal("7"), 0),
        ("M-1", "XOF", d[0], 3, Decimal("14.5"), 0),  # 10.5 + 4: one day
        ("M-1", "XOF", d[1], 4, Decimal("34.5"), 0),
        ("M-1", "XOF", d[2], 4, Decimal("34.5"), 0),
        ("M-1", "XOF", d[3], 4, Decimal("34.5"), 0),
        ("M-2", "XOF", d[3], 4, Decimal("1"), 0),
    ]
    state = await db.fetchval(
        "SELECT source_refreshed_at FROM analytics_rollup_state WHERE name = 'merchant_totals'"
    )
    assert state == await db.fetchval(
        "SELECT refreshed_at FROM analytics_view_refreshes WHERE view_name = 'mv_txn_daily_agg'"
    )


async def test_daily_rates_are_those_of_fx_rate_ranges(db: asyncpg.Connection) -> None:
    """``_rates_cte`` builds the rates from the range's days; ``fx_rate_ranges`` (the view
    that defines them) joined to every day must give the same: the latest rate on or before
    the day, the first rate before any, none for a currency without rate, 1 for USD."""
    from molam_workloads.api.queries.aggregates import _Params, _rates_cte

    await db.execute(
        "INSERT INTO fx_rates (day, currency, quote, rate) VALUES "
        "('2025-07-02', 'XOF', 'USD', 0.0017), ('2025-07-05', 'XOF', 'USD', 0.0018), "
        "('2025-07-03', 'JPY', 'USD', 0.0067), ('2025-07-04', 'JPY', 'USD', 0.0068), "
        "('2025-07-03', 'USD', 'EUR', 0.92)"
    )
    definition = """
        SELECT cur.currency, d.day::date AS fx_day,
               CASE WHEN cur.currency = $1 THEN 1 ELSE fx.rate END AS rate
        FROM (SELECT DISTINCT currency FROM fx_rates WHERE quote = $1
              UNION SELECT $1::char(3)) cur
        CROSS JOIN generate_series($2::date, $3::date, interval '1 day') d(day)
        LEFT JOIN fx_rate_ranges fx ON fx.quote = $1 AND fx.currency = cur.currency
          AND (d.day::date::timestamp AT TIME ZONE 'UTC') >= fx.valid_from
          AND (d.day::date::timestamp AT TIME ZONE 'UTC') < fx.valid_to
    """
    for first, days in ((D1 - timedelta(days=2), 10), (D1 + timedelta(days=3), 1), (D1, 4)):
        for quote in ("USD", "EUR"):
            p = _Params()
            cte = _rates_cte(
                first + timedelta(hours=3), first + timedelta(days=days), p.add(quote), p
            )
            built = await db.fetch(
                f"WITH RECURSIVE {cte} SELECT currency, fx_day, rate FROM r", *p.values
            )
            expected = await db.fetch(
                definition, quote, first.date(), (first + timedelta(days=days - 1)).date()
            )
            assert sorted(map(tuple, built)) == sorted(map(tuple, expected))
            assert len(built) > days
