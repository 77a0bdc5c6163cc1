"""KPIs, time series, breakdowns and top merchants over the hourly and daily aggregates.

Where rows come from. ``mv_txn_daily_agg`` answers whole UTC days it already holds: the days
that ended before its last recorded refresh (``analytics_view_refreshes``, minus a safety
margin for late events); everything else (the partial first and last days of the range, the
days since the refresh, every range a non-UTC time zone cuts across) comes from
``txn_hourly_agg``. Both are summed into one set of groups, so the split never changes a total.

Conversion. Hourly rows are grouped first (by the requested keys, the currency and the UTC day
that picks the FX rate); daily rows already are. The rate of each (currency, UTC day) of the
range is read once from ``fx_rate_ranges`` (``core.fx``) into a small table joined by hash,
and the money measures are multiplied by it before the final sums. A currency without any rate
is left out of every money total and of the money counts (payments, refunds) and listed in
``unconverted_currencies``; transaction counts and success rates still include it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from molam_workloads.api.errors import Unavailable
from molam_workloads.api.queries import Conn, prefix, rollup
from molam_workloads.api.queries.rollup import DailySources, daily_sources
from molam_workloads.core import catalogue, fx, ranks
from molam_workloads.core.currencies import CURRENCIES

MV_NAME = "mv_txn_daily_agg"
# Days that ended less than this before the view's refresh still come from the hourly table,
# so events that arrived just before midnight's refresh are never missed.
MV_SAFETY_MARGIN = timedelta(hours=1)

_SUMS = (
    "tx_count",
    "succeeded_count",
    "failed_count",
    "pending_count",
    "payment_count",
    "payment_volume_local",
    "refund_count",
    "refund_volume_local",
    "fee_local",
)


@dataclass(frozen=True)
class Filters:
    merchant_id: str | None = None
    country: str | None = None
    channel: str | None = None
    currency: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "merchant_id": self.merchant_id,
            "country": self.country,
            "channel": self.channel,
            "currency": self.currency,
        }


@dataclass(frozen=True)
class Key:
    """One grouping key: its output name and its expression over each source."""

    name: str
    hourly: str
    daily: str


@dataclass(frozen=True)
class Part:
    source: str  # "hourly" | "daily"
    start: Any  # datetime for hourly, date for daily
    end: Any


def utc_midnight(d: date) -> datetime:
    return datetime.combine(d, time(0), UTC)


def plan_parts(
    start: datetime, end: datetime, refreshed_at: datetime | None, *, mv_allowed: bool
) -> list[Part]:
    """Split [start, end) into whole UTC days the view holds and hourly remainders."""
    if not mv_allowed or refreshed_at is None:
        return [Part("hourly", start, end)]
    first = start.astimezone(UTC).date()
    if utc_midnight(first) < start:
        first += timedelta(days=1)
    last = min(end, refreshed_at - MV_SAFETY_MARGIN).astimezone(UTC).date()  # exclusive
    if last <= first:
        return [Part("hourly", start, end)]
    parts = []
    if start < utc_midnight(first):
        parts.append(Part("hourly", start, utc_midnight(first)))
    parts.append(Part("daily", first, last))
    if utc_midnight(last) < end:
        parts.append(Part("hourly", utc_midnight(last), end))
    return parts


class _Params:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _filter_sql(filters: Filters, p: _Params) -> str:
    conds = []
    for column in ("merchant_id", "country", "channel", "currency"):
        value = getattr(filters, column)
        if value is not None:
            conds.append(f"AND {column} = {p.add(value)}")
    return " ".join(conds)


def _rates_cte(start: datetime, end: datetime, quote: str, p: _Params) -> str:
    """``r``: the rate of every currency that has one, for every UTC day of [start, end): that
    of the currency's latest rate on or before the day, or its first rate for days before it
    (``fx_rate_ranges``' meaning); 1 for the reporting currency itself.

    Built from the range's own days: the rate in force on the first day
    (``core.fx.rate_on``: two key probes per currency), then the rates loaded for the following
    days, carried forward over days without one. Joining every day to ``fx_rate_ranges``
    instead compares it with every range ever loaded: with daily rates, it grows with the
    years of history.
    """
    first = start.astimezone(UTC).date()
    first_day = p.add(first)
    # A parameter, not a literal: the text of the statement stays the same whatever the range,
    # so the connection's prepared statement is reused instead of parsed and planned again.
    n_days = p.add(((end - timedelta(microseconds=1)).astimezone(UTC).date() - first).days)
    # fx_cur: the currencies with a rate, by a loose index scan (one probe of the primary key
    # per currency, where DISTINCT reads every rate ever loaded). Needs WITH RECURSIVE.
    # See docs/decisions/018-fx-rate-probes.md.
    return f"""fx_cur AS (
  SELECT min(currency) AS currency FROM fx_rates WHERE quote = {quote}
  UNION ALL
  SELECT (SELECT min(f.currency) FROM fx_rates f
          WHERE f.quote = {quote} AND f.currency > fx_cur.currency)
  FROM fx_cur WHERE fx_cur.currency IS NOT NULL
), r AS MATERIALIZED (
  SELECT currency, fx_day, CASE WHEN currency = {quote} THEN 1
    ELSE first_value(rate) OVER (PARTITION BY currency, known ORDER BY fx_day) END AS rate
  FROM (
    SELECT cur.currency, d.day AS fx_day,
      coalesce(f.rate, CASE WHEN d.day = {first_day}::date THEN cur.opening END) AS rate,
      count(coalesce(f.rate, CASE WHEN d.day = {first_day}::date THEN cur.opening END))
        OVER (PARTITION BY cur.currency ORDER BY d.day) AS known
    FROM (
      SELECT c.currency, {fx.rate_on("c.currency", f"{first_day}::date", quote)} AS opening
      FROM (SELECT currency FROM fx_cur WHERE currency IS NOT NULL
            UNION SELECT {quote}::char(3)) c
    ) cur
    CROSS JOIN (SELECT {first_day}::date + i AS day FROM generate_series(0, {n_days}::int) i) d
    LEFT JOIN fx_rates f ON f.quote = {quote} AND f.currency = cur.currency AND f.day = d.day
      AND d.day > {first_day}::date
  ) filled
)"""


# A query planned with a state (``prefix.StateCache``) reads the state's token back in the same
# statement; a changed state (a rebuild, new FX rates) plans it again, at most this many times.
STATE_ATTEMPTS = 3

# The day-bucket key of time series (``routers.timeseries``): local days in the time zone
# named by the first extra parameter.
DAY_BUCKET = "(hour AT TIME ZONE $1)::date"


def _prefix_plan(
    start: datetime,
    end: datetime,
    cutoff: datetime | None,
    keys: Sequence[Key],
    extra_params: Sequence[Any],
    merchantless: bool,
) -> prefix.Plan | None:
    """The running totals' plan for this query, or None when it cannot use them: none built
    for this currency and rates, or a key they do not hold (hourly buckets)."""
    if cutoff is None:
        return None
    day_buckets = None
    for k in keys:
        if k.hourly == DAY_BUCKET and extra_params:
            day_buckets = zone(str(extra_params[0]))
        elif k.hourly not in prefix.KEY_COLUMNS or (k.hourly == "merchant_id" and merchantless):
            return None
    return prefix.plan(start, end, cutoff, merchants=not merchantless, day_buckets=day_buckets)


def _prefix_key(k: Key) -> str:
    return "e.label" if k.hourly == DAY_BUCKET else prefix.KEY_COLUMNS[k.hourly]


@dataclass(frozen=True)
class Ranking:
    """The first ``limit`` groups by ``by`` (``RANKINGS``), ties by key."""

    by: str
    limit: int

    def order_limit(self, key: str) -> str:
        return f"ORDER BY {RANKINGS[self.by]}, g.{key} LIMIT {self.limit:d}"


def _ranks_merchants(keys: Sequence[Key]) -> bool:
    return len(keys) == 1 and keys[0].hourly == "merchant_id"


def _rank_blocks(pl: prefix.Plan | None) -> list[tuple[date, date]] | None:
    """The kept ranking blocks (``core.ranks``) that cover a merchant ranking's range, if the
    running totals answer all of it: whole days by the fewest blocks, a partial first or last
    day by its own day (a merchant's sum over part of a day is at most that over the day)."""
    if pl is None or pl.table != prefix.DAILY or pl.hourly or pl.served is None:
        return None
    t0, tn = pl.served
    first, last = t0.astimezone(UTC), (tn - prefix.H).astimezone(UTC)
    nodes = {(d, d + timedelta(days=1)) for d in {first.date(), last.date()}}
    whole = first.date() + timedelta(days=first.time() != time(0))
    end = last.date() + timedelta(days=tn.astimezone(UTC).time() == time(0))
    nodes -= {(d, d + timedelta(days=1)) for d in (first.date(), last.date()) if whole <= d < end}
    nodes.update(ranks.blocks(whole, end))
    return sorted(nodes)


def _prune_ctes(
    nodes: Sequence[tuple[date, date]], depth: int, ranking: Ranking, quote: str, p: _Params
) -> tuple[list[str], str]:
    """``pr``: the candidates of a ranking from its blocks (the first ``depth`` merchants of
    each, ``ranks.depth``), whether the blocks are usable (all there, built from the running
    totals this statement reads, long enough) and the bound of every other merchant's sum (the
    sum of the blocks' next amounts). Returns the CTEs and the candidates' array expression
    (empty when not usable)."""
    n = p.add(depth)
    ctes = [
        # a block before the first day of the running totals is never built: nothing there
        f"prb AS MATERIALIZED (SELECT r.merchants[1:{n}::int] AS ms, "
        f"coalesce(r.amounts[{n}::int + 1], 0) AS bound, "
        "r.lo IS NOT NULL OR n.hi <= (SELECT min(day) FROM analytics_prefix_daily) AS found "
        f"FROM unnest({p.add([a for a, _ in nodes])}::date[], "
        f"{p.add([b for _, b in nodes])}::date[]) AS n(lo, hi) "
        f"LEFT JOIN analytics_prefix_ranks r ON r.measure = {p.add(ranking.by)} "
        "AND r.lo = n.lo AND r.hi = n.hi)",
        "pr AS MATERIALIZED (SELECT o.ok, (SELECT sum(bound) FROM prb) AS bound, "
        "CASE WHEN o.ok THEN ARRAY(SELECT DISTINCT m FROM prb, unnest(prb.ms) AS m) "
        "ELSE '{}'::text[] END AS cands "
        "FROM (SELECT (SELECT bool_and(found) FROM prb) AND EXISTS ("
        "SELECT FROM analytics_prefix_state s JOIN analytics_prefix_ranks_state k "
        f"ON k.built_from = s.built_at WHERE s.quote = {quote}::bpchar "
        f"AND k.size >= {n}::int) AS ok) o)",
    ]
    return ctes, "(SELECT cands FROM pr)::text[]"


def _pruned_holds(result: Grouped, ranking: Ranking) -> bool:
    """The candidates' first ``limit`` are the first of all merchants: there are that many,
    and the last of them has more than any other merchant can have (``_prune_ctes``)."""
    rows = result.rows
    return (
        len(rows) == ranking.limit
        and bool(rows[0]["prune_ok"])
        and rows[-1][ranking.by] > rows[0]["prune_bound"]
    )


def _ranking_ctes(
    pl: prefix.Plan,
    ranking: Ranking,
    where_prefix: str,
    where_filters: str,
    p: _Params,
    candidates: str = "",
) -> tuple[list[str], str, str]:
    """``rk``: the merchants first by ``ranking``, from their running totals' transaction count,
    rows and converted payment volume alone (plus the hours after the cutoff), as the full
    query would sum and order them: only merchants with hourly rows in range, a currency
    without rate counted in the transactions only. Returns the CTEs and both
    conditions narrowed to those merchants, so the full sums cost a few probes per winner.

    Summing all 13 measures of every merchant's cells is what a ranking over running totals
    spent its time on: ranking on three of them first cost a third of it at 500 and 600
    merchants (docs/decisions/028-merchant-ranking-first.md).
    """
    assert len(pl.labels) == 2, "one bucket: merchant keys have no day buckets"
    rank_where = where_prefix + (f" AND x.merchant_id = ANY({candidates})" if candidates else "")
    probes = prefix.probes_cte(pl, rank_where, p.add, "rk_pb", ("tx_count", "gross"))
    last = len(pl.labels)
    parts = [
        f"SELECT merchant_id, currency, CASE WHEN i = {last} THEN n_rows ELSE -n_rows END AS n, "
        f"CASE WHEN i = {last} THEN tx_count ELSE -tx_count END AS tx, "
        f"CASE WHEN i = {last} THEN gross ELSE -gross END AS gross FROM rk_pb"
    ]
    for a, b in pl.hourly:  # hours at or after the cutoff: from the hourly rows
        parts.append(
            "SELECT coalesce(h.merchant_id, ''), h.currency, 1, h.tx_count, "
            "h.payment_volume_local * r.rate FROM txn_hourly_agg h LEFT JOIN r "
            "ON r.currency = h.currency AND r.fx_day = (h.hour AT TIME ZONE 'UTC')::date "
            f"WHERE h.hour >= {p.add(a)} AND h.hour < {p.add(b)} "
            + where_filters.replace("AND ", "AND h.")
        )
    union = " UNION ALL ".join(parts)
    # One level, per merchant: a currency without rows in range adds exactly nothing (equal
    # running totals at both ends), so leaving it out per currency, as the full query does,
    # changes no sum; only a merchant with no rows in range at all is left out.
    rank = (
        f"rk AS (SELECT merchant_id FROM (SELECT merchant_id, "
        f"coalesce(sum(gross), 0) AS gross_volume, coalesce(sum(tx), 0) AS tx_count "
        f"FROM ({union}) e GROUP BY merchant_id HAVING sum(n) > 0) m "
        f"ORDER BY {RANKINGS[ranking.by]}, nullif(merchant_id, '') LIMIT {ranking.limit:d})"
    )
    winners = "(SELECT array_agg(merchant_id) FROM rk)::text[]"
    return (
        [probes, rank],
        f"{where_prefix} AND x.merchant_id = ANY({winners})",
        f"{where_filters} AND coalesce(merchant_id, '') = ANY({winners})",
    )


@dataclass
class Grouped:
    """Rows of the converted groups, plus what could not be converted."""

    rows: list[asyncpg.Record]
    unconverted: list[str] = field(default_factory=list)
    daily_days: int = 0
    daily_source: str | None = None  # the table whole days were read from, if any
    # the merchant-less rollup (top merchants: the merchant totals) lags the daily view:
    # rebuild it
    rollup_behind: bool = False
    data_as_of: datetime | None = None  # event-time watermark of the data (``prefix.state``)


async def grouped(
    conn: Conn,
    *,
    start: datetime,
    end: datetime,
    filters: Filters,
    keys: Sequence[Key],
    reporting_currency: str,
    mv_allowed: bool = True,
    extra_params: Sequence[Any] = (),
    order_limit: str = "",
    per_merchant: bool = False,
    only_merchants: Sequence[str] | None = None,
    sources: DailySources | None = None,
    named_merchants_only: bool = False,
    states: prefix.StateCache | None = None,
    ranking: Ranking | None = None,
) -> Grouped:
    """Sum the measures over [start, end) by ``keys``, converted to ``reporting_currency``.

    ``extra_params`` are bound first ($1, $2, ...) so key expressions may refer to them (the
    time zone of day buckets); ``order_limit`` is appended to the outer query.
    ``per_merchant``: the keys keep merchants apart, so grouping the daily view's rows before
    converting them would not reduce them (it is skipped). ``only_merchants``: only these
    merchants' rows (on top of ``filters``). ``sources``: ``daily_sources`` already read in
    this transaction. ``named_merchants_only``: leave out the rows without a merchant.
    ``states``: the running totals' states last seen (the API's): planned with one, the query
    checks it in its answer, saving a round trip; without, the state is read first.
    ``ranking``: only the first groups by that ranking (``order_limit`` is then derived from it);
    ranking merchants from running totals, the query first ranks them on the sums the order
    needs, then sums every measure of the winners alone (``_ranking_ctes``); unfiltered and
    before the totals' cutoff, it first ranks only the candidates of the kept lists of the
    range's blocks, and ranks every merchant only if their bound does not show the answer
    (``_prune_ctes``, docs/decisions/031-merchant-ranking-lists.md).

    Where running totals (``prefix``, migrations 070, 100) can answer the range, they do, and only
    the hours they do not hold come from hourly rows; otherwise whole days come from the daily
    view or its rollup (``plan_parts``).
    """
    rc = reporting_currency
    state = await prefix.last_state(conn, rc, states)
    blocks = None
    depth = ranks.depth(ranking.limit, state.ranked) if ranking else None
    if depth and _ranks_merchants(keys) and filters == Filters() and only_merchants is None:
        cutoff = state.cutoff_for(merchants=True)  # merchant keys: the merchants' totals
        blocks = _rank_blocks(_prefix_plan(start, end, cutoff, keys, extra_params, False))
    asked = functools.partial(
        _grouped_with,
        conn,
        start=start,
        end=end,
        filters=filters,
        keys=keys,
        reporting_currency=rc,
        mv_allowed=mv_allowed,
        extra_params=extra_params,
        order_limit=order_limit,
        per_merchant=per_merchant,
        only_merchants=only_merchants,
        sources=sources,
        named_merchants_only=named_merchants_only,
        ranking=ranking,
    )
    if blocks and depth:
        # The kept ranking's candidates first; every merchant, as below, unless it holds.
        result, seen = await asked(state, prune=blocks, depth=depth)
        if ranking is not None and _pruned_holds(result, ranking) and seen == state.token:
            if states is not None:
                states.put(rc, state)
            return result
    for _ in range(STATE_ATTEMPTS):
        result, seen = await asked(state)
        if result.rows and seen == state.token:
            if states is not None:
                states.put(rc, state)
            return result
        fresh = await prefix.state(conn, rc)  # no row to read it from, or it changed
        if not result.rows and fresh.token == state.token:
            if states is not None:
                states.put(rc, fresh)
            result.data_as_of = fresh.data_as_of
            return result
        state = fresh
    raise Unavailable("the running totals changed during every try; try again")


async def _grouped_with(
    conn: Conn,
    state: prefix.State,
    *,
    start: datetime,
    end: datetime,
    filters: Filters,
    keys: Sequence[Key],
    reporting_currency: str,
    mv_allowed: bool = True,
    extra_params: Sequence[Any] = (),
    order_limit: str = "",
    per_merchant: bool = False,
    only_merchants: Sequence[str] | None = None,
    sources: DailySources | None = None,
    named_merchants_only: bool = False,
    ranking: Ranking | None = None,
    prune: Sequence[tuple[date, date]] = (),
    depth: int = 0,
) -> tuple[Grouped, str | None]:
    """``grouped`` planned with ``state``; the answer and the state token read with it.
    ``prune``: rank only the first ``depth`` candidates of these kept ranking blocks
    (``_prune_ctes``)."""
    if ranking is not None:
        order_limit = ranking.order_limit(keys[0].name)
    p = _Params()
    for value in extra_params:
        p.add(value)
    quote = p.add(reporting_currency)
    where_filters = _filter_sql(filters, p)
    if only_merchants is not None:
        where_filters += f" AND merchant_id = ANY({p.add(list(only_merchants))}::text[])"
    # the same conditions over the running totals (``x``: no merchant is '' there)
    where_prefix = where_filters.replace("AND ", "AND x.")
    if named_merchants_only:
        where_filters += " AND merchant_id IS NOT NULL"
        where_prefix += " AND x.merchant_id <> ''"
    n_keys = len(keys)
    group_by = ", ".join(str(i) for i in range(1, n_keys + 3))
    sums = ", ".join(f"sum({m}) AS {m}" for m in _SUMS)
    columns = ", ".join(_SUMS)
    selects = []
    ctes = []
    daily_days = 0
    merchantless = not per_merchant and filters.merchant_id is None and only_merchants is None
    merchantless = merchantless and not named_merchants_only
    cutoff = state.cutoff_for(merchants=not merchantless)
    pl = _prefix_plan(start, end, cutoff, keys, extra_params, merchantless)
    extra_cols, candidates = "", ""
    if prune and ranking is not None:  # the ranking's plan has no hourly rows (``_rank_blocks``)
        prune_ctes, candidates = _prune_ctes(prune, depth, ranking, quote, p)
        ctes.extend(prune_ctes)
        extra_cols = ", (SELECT ok FROM pr) AS prune_ok, (SELECT bound FROM pr) AS prune_bound"
    if pl is not None:
        if ranking is not None and pl.table == prefix.DAILY and _ranks_merchants(keys):
            rank_ctes, where_prefix, where_filters = _ranking_ctes(
                pl, ranking, where_prefix, where_filters, p, candidates
            )
            ctes.extend(rank_ctes)
        ctes.append(prefix.probes_cte(pl, where_prefix, p.add))
        selects.append(prefix.bucket_select(pl, [_prefix_key(k) for k in keys], p.add))
        parts = [Part("hourly", a, b) for a, b in pl.hourly]
        daily_days, daily_table = pl.days, pl.table
        sources = None
    else:
        if not mv_allowed:
            sources = None
        elif sources is None:
            sources = await daily_sources(conn)
        # Without merchants in the keys or the filters, the merchant-less rollup answers whole
        # days when it was built from the view's current refresh; otherwise the view itself.
        use_rollup = merchantless and sources is not None and sources.rollup_current
        daily_table = rollup.TABLE if use_rollup else MV_NAME
        refreshed_at = sources.view_refreshed_at if sources else None
        parts = plan_parts(start, end, refreshed_at, mv_allowed=mv_allowed)
    # columns after the sums of s: money already converted (prefix totals only), and whether
    # the row is such a prefix row
    unconverted_cols = "NULL::numeric, NULL::numeric, NULL::numeric, false"
    for part in parts:
        if part.source == "hourly":
            # 24 rows a day: group them per (keys, currency, UTC day) before converting.
            key_sql = "".join(f"{k.hourly} AS {k.name}, " for k in keys)
            selects.append(
                f"SELECT {key_sql}currency, (hour AT TIME ZONE 'UTC')::date AS fx_day, "
                f"count(*) AS n, {sums}, {unconverted_cols} "
                f"FROM txn_hourly_agg WHERE hour >= {p.add(part.start)} "
                f"AND hour < {p.add(part.end)} {where_filters} GROUP BY {group_by}"
            )
        else:
            daily_days += (part.end - part.start).days
            key_sql = "".join(f"{k.daily} AS {k.name}, " for k in keys)
            where = (
                f"FROM {daily_table} WHERE day >= {p.add(part.start)} "
                f"AND day < {p.add(part.end)} {where_filters}"
            )
            if per_merchant:  # one row per merchant and day already: converted as they are
                selects.append(
                    f"SELECT {key_sql}currency, day AS fx_day, 1 AS n, {columns}, "
                    f"{unconverted_cols} {where}"
                )
            else:  # merchants, countries, channels of a day folded before converting
                selects.append(
                    f"SELECT {key_sql}currency, day AS fx_day, count(*) AS n, {sums}, "
                    f"{unconverted_cols} {where} GROUP BY {group_by}"
                )
    if parts:
        rates = _rates_cte(start, end, quote, p)
    else:  # every row from running totals, already converted
        rates = (
            f"r (currency, fx_day, rate) AS (SELECT {quote}::bpchar, NULL::date, NULL::numeric "
            "WHERE false)"
        )
    key_cols = "".join(f"s.{k.name}, " for k in keys)
    key_names = ", ".join(f"g.{k.name}" for k in keys)
    key_names_s = "".join(f"{k.name}, " for k in keys)
    outer_keys = f"{key_names}, " if keys else ""
    outer_group = f"GROUP BY {key_names}" if keys else ""
    union = "\n UNION ALL\n ".join(selects)
    # Extra parameters may be used only by hourly parts; naming them here gives them a type
    # even when every row comes from the daily view.
    typed = ", ".join(f"${i}::text" for i in range(1, len(extra_params) + 1))
    prelude = f"_params AS (SELECT {typed}), " if extra_params else ""
    extra_ctes = "".join(f", {c}" for c in ctes)
    sums_cols = ", ".join(_SUMS)
    # r: the rates (``_rates_cte``).
    # c: sums per (keys, currency), money converted; a currency left without rate is flagged.
    # The outer query folds the currencies of each group and lists the unconverted ones. The
    # state and the watermark are subqueries, run once per statement, not once per row: the
    # watermark probes every hourly partition (22 us at 4 partitions), a tenth of a breakdown's
    # SQL when called for each of its rows.
    sql = f"""
WITH RECURSIVE {prelude}{rates}{extra_ctes}, s ({key_names_s}currency, fx_day, n,
    {sums_cols}, gross_c, refunds_c, fees_c, pre) AS (
 {union}
), c AS (
  SELECT {key_cols}s.currency,
    bool_or(CASE WHEN s.pre THEN s.gross_c IS NULL ELSE r.rate IS NULL END) AS unconverted,
    sum(s.tx_count) AS tx_count, sum(s.succeeded_count) AS succeeded_count,
    sum(s.failed_count) AS failed_count, sum(s.pending_count) AS pending_count,
    sum(s.payment_count) AS payment_count,
    sum(CASE WHEN s.pre THEN s.gross_c ELSE s.payment_volume_local * r.rate END) AS gross,
    sum(s.refund_count) AS refund_count,
    sum(CASE WHEN s.pre THEN s.refunds_c ELSE s.refund_volume_local * r.rate END) AS refunds,
    sum(CASE WHEN s.pre THEN s.fees_c ELSE s.fee_local * r.rate END) AS fees
  FROM s LEFT JOIN r ON r.currency = s.currency AND r.fx_day = s.fx_day
  GROUP BY {key_cols}s.currency
  HAVING sum(s.n) > 0  -- running totals give every cell a row: keep those with hourly rows
)
SELECT {outer_keys}
  coalesce(sum(g.tx_count), 0)::bigint AS tx_count,
  coalesce(sum(g.succeeded_count), 0)::bigint AS succeeded_count,
  coalesce(sum(g.failed_count), 0)::bigint AS failed_count,
  coalesce(sum(g.pending_count), 0)::bigint AS pending_count,
  coalesce(sum(g.payment_count) FILTER (WHERE NOT g.unconverted), 0)::bigint AS payment_count,
  coalesce(sum(g.gross), 0) AS gross_volume,
  coalesce(sum(g.refund_count) FILTER (WHERE NOT g.unconverted), 0)::bigint AS refund_count,
  coalesce(sum(g.refunds), 0) AS refund_volume,
  coalesce(sum(g.fees), 0) AS fees,
  array_agg(g.currency::text) FILTER (WHERE g.unconverted) AS unconverted,
  {prefix.token_sql(quote)} AS state_token, (SELECT analytics_data_as_of()) AS data_as_of
  {extra_cols}
FROM c g
{outer_group}
{order_limit}
"""
    rows = await conn.fetch(sql, *p.values)
    unconverted = sorted({c.strip() for row in rows for c in (row["unconverted"] or [])})
    answer = Grouped(
        rows=rows,
        unconverted=unconverted,
        daily_days=daily_days,
        daily_source=daily_table if daily_days else None,
        rollup_behind=merchantless and sources is not None and sources.rollup_behind,
        data_as_of=rows[0]["data_as_of"] if rows else None,
    )
    return answer, rows[0]["state_token"] if rows else None


# Orders of the merchant ranking, over the outputs of ``grouped`` (and of ``_RANK``).
RANKINGS = {
    "gross_volume": "gross_volume DESC, tx_count DESC",
    "tx_count": "tx_count DESC, gross_volume DESC",
}

# The merchants that can be in the top ``limit``: per merchant, the exact transaction count and
# bounds of the converted payment volume from its sums per currency and the lowest and highest
# rate of each currency over the range (positive and negative amounts bound apart, per day or
# finer: a day has one rate). Every merchant of the exact top N has a volume at least the N-th
# highest lower bound (N merchants reach their lower bounds), so its upper bound does too:
# keeping those loses none of them.
# b: the lowest and highest rate of each currency of s over the days of the range, which are
# the rates ``_rates_cte`` gives those days: the one in force on the first day (its latest
# rate on or before it, else its first one) and those loaded for the days after it (index
# probes, not every day's rate); 1 for the reporting currency; none without any rate.
_CANDIDATES = """
WITH s AS (
 {union}
), sc AS (
  SELECT merchant_id, currency, sum(tx_count) AS tx_count, sum(pos) AS pos, sum(neg) AS neg
  FROM s GROUP BY merchant_id, currency
), b AS MATERIALIZED (
  SELECT c.currency,
    CASE WHEN c.currency = {quote} THEN 1 ELSE least(o.rate, x.lo) END AS lo,
    CASE WHEN c.currency = {quote} THEN 1 ELSE greatest(o.rate, x.hi) END AS hi
  FROM (SELECT DISTINCT currency FROM sc) c
  CROSS JOIN LATERAL (SELECT coalesce(
      (SELECT f.rate FROM fx_rates f WHERE f.quote = {quote} AND f.currency = c.currency
         AND f.day <= {first_day}::date ORDER BY f.day DESC LIMIT 1),
      (SELECT f.rate FROM fx_rates f WHERE f.quote = {quote} AND f.currency = c.currency
         ORDER BY f.day LIMIT 1)) AS rate) o
  CROSS JOIN LATERAL (SELECT min(f.rate) AS lo, max(f.rate) AS hi FROM fx_rates f
      WHERE f.quote = {quote} AND f.currency = c.currency AND f.day > {first_day}::date
        AND f.day <= {last_day}::date) x
), m AS (
  SELECT sc.merchant_id, sum(sc.tx_count) AS tx_count,
    sum(coalesce(b.lo, 0) * sc.pos + coalesce(b.hi, 0) * sc.neg) AS lo,
    sum(coalesce(b.hi, 0) * sc.pos + coalesce(b.lo, 0) * sc.neg) AS hi
  FROM sc JOIN b ON b.currency = sc.currency
  GROUP BY sc.merchant_id
)
SELECT merchant_id FROM m
WHERE {keep} >= coalesce((SELECT {bound} FROM m ORDER BY 1 DESC OFFSET {offset} LIMIT 1),
                         {keep})
"""
# by -> (the candidate's measure, the N-th highest value it must reach)
_KEEP = {"gross_volume": ("hi", "lo"), "tx_count": ("tx_count", "tx_count")}
_RANK_MEASURES = (
    "sum(tx_count) AS tx_count, "
    "coalesce(sum(payment_volume_local) FILTER (WHERE payment_volume_local > 0), 0) AS pos, "
    "coalesce(sum(payment_volume_local) FILTER (WHERE payment_volume_local < 0), 0) AS neg"
)
# Hours of one UTC day (one rate): the day's sum is positive or negative as a whole.
_RANK_MEASURES_ONE_DAY = (
    "sum(tx_count) AS tx_count, greatest(sum(payment_volume_local), 0) AS pos, "
    "least(sum(payment_volume_local), 0) AS neg"
)
# The same sums over whole days [a, b) from the running totals (migration 040): the row of day
# b - 1 minus that of day a - 1, each taken at the table's last day at most (it has a row for
# every day from a (merchant, currency)'s first day to the table's last one, and nothing
# happened after that). A (merchant, currency) without a row on day a - 1 had nothing before a.
_TOTALS_PART = f"""SELECT e.merchant_id, e.currency,
    e.tx_count - coalesce(f.tx_count, 0) AS tx_count,
    e.pos_volume - coalesce(f.pos_volume, 0) AS pos,
    e.neg_volume - coalesce(f.neg_volume, 0) AS neg
  FROM {rollup.TOTALS_TABLE} e
  LEFT JOIN {rollup.TOTALS_TABLE} f
    ON f.day = least({{a}}::date - 1, (SELECT max(day) FROM {rollup.TOTALS_TABLE}))
    AND f.merchant_id = e.merchant_id AND f.currency = e.currency
  WHERE e.day = least({{b}}::date - 1, (SELECT max(day) FROM {rollup.TOTALS_TABLE}))"""


async def top_merchants(
    conn: Conn,
    *,
    start: datetime,
    end: datetime,
    filters: Filters,
    reporting_currency: str,
    by: str,
    limit: int,
    states: prefix.StateCache | None = None,
) -> Grouped:
    """The ``limit`` merchants first by ``by`` (``RANKINGS``), each with every KPI sum: the
    rows ``grouped`` gives per merchant, ordered and cut at ``limit``.

    Converting every merchant's every day is what makes that query slow; a first query
    (``_CANDIDATES``) sums each merchant per currency only, without the daily rates, and keeps
    the merchants that can still be in the top ``limit``; ``grouped`` then converts and ranks
    those alone. Exact, whatever the rates: volatile rates only keep more candidates. Run it in
    a REPEATABLE READ transaction so that both queries read one snapshot.

    With running totals per merchant (``prefix``, migrations 070 and 100) for the reporting
    currency and current rates, one ``grouped`` query ranks every merchant exactly instead.

    Otherwise, whole days of the first query come from the merchant totals (``_TOTALS_PART``,
    two rows per merchant whatever the range) when they were built from the view's current
    refresh, read in the same snapshot, and no filter asks for a country, channel or currency
    (they have none); otherwise from the view itself. Partial days always come from the hourly
    rows, in both queries. ``rollup_behind`` of the answer: the totals lag the view (rebuild them).
    """
    # the last state seen is enough to choose: ``grouped`` checks it against the answer's
    state = await prefix.last_state(conn, reporting_currency, states)
    cutoff = state.cutoff_for(merchants=True)
    if cutoff is not None and prefix.plan(start, end, cutoff, merchants=True, day_buckets=None):
        # Running totals per merchant: every merchant's exact sums cost up to four probes per
        # cell, so rank them all in one query.
        return await grouped(
            conn,
            start=start,
            end=end,
            filters=filters,
            keys=(Key("merchant_id", "merchant_id", "merchant_id"),),
            reporting_currency=reporting_currency,
            per_merchant=True,
            named_merchants_only=True,
            ranking=Ranking(by, limit),
            states=states,
        )
    keep, bound = _KEEP[by]
    sources = await daily_sources(conn)
    use_totals = filters == Filters() and sources.totals_current
    parts = plan_parts(start, end, sources.view_refreshed_at, mv_allowed=True)
    p = _Params()
    quote = p.add(reporting_currency)
    where_filters = _filter_sql(filters, p) + " AND merchant_id IS NOT NULL"
    selects = []
    for part in parts:
        if part.source == "daily" and use_totals:
            selects.append(_TOTALS_PART.format(a=p.add(part.start), b=p.add(part.end)))
            continue
        table, column = ("txn_hourly_agg", "hour") if part.source == "hourly" else (MV_NAME, "day")
        one_day = (
            part.source == "hourly"
            and part.start.astimezone(UTC).date()
            == (part.end - timedelta(microseconds=1)).astimezone(UTC).date()
        )
        selects.append(
            f"SELECT merchant_id, currency, "
            f"{_RANK_MEASURES_ONE_DAY if one_day else _RANK_MEASURES} FROM {table} "
            f"WHERE {column} >= {p.add(part.start)} AND {column} < {p.add(part.end)} "
            f"{where_filters} GROUP BY merchant_id, currency"
        )
    sql = _CANDIDATES.format(
        union="\n UNION ALL\n ".join(selects),
        quote=quote,
        first_day=p.add(start.astimezone(UTC).date()),
        last_day=p.add((end - timedelta(microseconds=1)).astimezone(UTC).date()),
        keep=keep,
        bound=bound,
        offset=f"{p.add(limit - 1)}::int",
    )
    candidates = [row["merchant_id"] for row in await conn.fetch(sql, *p.values)]
    behind = sources.totals_behind
    if not candidates:
        as_of = (await prefix.state(conn, reporting_currency)).data_as_of
        return Grouped(rows=[], rollup_behind=behind, data_as_of=as_of)
    result = await grouped(
        conn,
        start=start,
        end=end,
        filters=filters,
        keys=(Key("merchant_id", "merchant_id", "merchant_id"),),
        reporting_currency=reporting_currency,
        per_merchant=True,
        only_merchants=candidates,
        ranking=Ranking(by, limit),
        sources=sources,
        states=states,
    )
    result.rollup_behind = behind
    return result


# --- turning sums into KPIs -------------------------------------------------------------------


def money_exp(currency: str) -> Decimal:
    """The currency's minor unit (0.01 for USD, 1 for XOF), money's rounding step."""
    return Decimal(1).scaleb(-CURRENCIES.get(currency, 2))


def money(value: Decimal, currency: str) -> Decimal:
    return value.quantize(money_exp(currency), rounding=ROUND_HALF_UP)


# Each KPI of ``core.catalogue``: its name and its shown value from the sums.
_KPIS = tuple((m.name, m.shown) for m in catalogue.kpis())
# The sums the KPIs are computed from (output columns of ``grouped``), all zero.
_NO_SUMS = {
    s.name: Decimal(0) if s.unit is catalogue.Unit.MONEY else 0
    for m in catalogue.kpis()
    for s in m.sums
}


def kpis_of(row: asyncpg.Record | None, currency: str) -> dict[str, Any]:
    """The KPI document of one group (``row`` None: nothing in range, all zero): each KPI of
    ``core.catalogue`` computed exactly from the row's sums, then rounded for its unit."""
    exp = money_exp(currency)
    sums = _NO_SUMS if row is None else row
    return {name: show(sums, exp) for name, show in _KPIS}


def zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def utc_aligned(tz: ZoneInfo, start: datetime, end: datetime) -> bool:
    """True if local days in ``tz`` are UTC days all over [start, end) (the view may be used)."""
    day = start.astimezone(UTC).date()
    last = end.astimezone(UTC).date()
    while day <= last:
        if tz.utcoffset(utc_midnight(day).replace(tzinfo=None)) != timedelta(0):
            return False
        day += timedelta(days=1)
    return True
