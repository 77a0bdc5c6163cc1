"""Ranges from running totals (migrations 070, 100): a few index probes per group, whatever the
length.

``analytics_prefix_hourly`` (merchants folded, per country, channel and currency) answers
whatever names no merchant, hour by hour, so partial days and day buckets in any time zone
come from it too. Whatever names merchants is answered per (merchant, country, channel,
currency) cell by ``analytics_prefix_daily`` (running totals through each UTC day) plus
``analytics_prefix_intraday`` (running totals within each UTC day, through each hour): the
total before any hour boundary is one or two probes. Hours at or after the totals' cutoff
always come from ``txn_hourly_agg``.

A bucket [t_i, t_i+1) of a cell is the running total before t_i+1 minus the one before t_i,
each probed at the totals' last hour (day) at most: the tables are dense from a cell's first
hour (day) to the last one (the within-day table, to the end of each day), so a cell without a
row at the earlier probe had nothing before it. ``plan`` computes the probes;
``aggregates.grouped`` sums what they give with the hourly rows of the remaining parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from molam_workloads.api.queries import Conn

HOURLY = "analytics_prefix_hourly"
DAILY = "analytics_prefix_daily"
INTRADAY = "analytics_prefix_intraday"
H = timedelta(hours=1)
D = timedelta(days=1)


def token_sql(quote: str) -> str:
    """What a plan over the totals depends on, as one text (NULL: none usable for ``quote``):
    their cutoff and within-day totals, if built for this reporting currency with the current
    FX rates. A query reads it back with its answer (``aggregates.grouped``)."""
    return (
        "(SELECT concat_ws(' ', s.cutoff, s.fx_version, s.intraday_rows IS NOT NULL) "
        "FROM analytics_prefix_state s JOIN analytics_fx_version v "
        f"ON v.version = s.fx_version WHERE s.quote = {quote}::bpchar)"
    )


# The totals' cutoff and within-day totals (migration 100) if usable for the reporting currency
# (else NULL), the token of that, and the data's watermark.
_STATE = f"""
SELECT s.cutoff, s.intraday_rows IS NOT NULL AS intraday, {token_sql("$1")} AS token,
       analytics_data_as_of() AS data_as_of,
       (SELECT k.merchants FROM analytics_prefix_ranks_state k WHERE k.built_from = s.built_at)
         AS ranked
FROM (SELECT NULL) one
LEFT JOIN (analytics_prefix_state s JOIN analytics_fx_version v ON v.version = s.fx_version)
  ON s.quote = $1::bpchar
"""


@dataclass(frozen=True)
class State:
    cutoff: datetime | None  # the totals hold the hours before it; None: not usable
    data_as_of: datetime | None
    intraday: bool = False  # the within-day totals per merchant were built with them
    token: str | None = None  # ``token_sql``'s value when read
    ranked: int = 0  # merchants of the kept rankings built with them (migration 140), if any

    def cutoff_for(self, merchants: bool) -> datetime | None:
        """The cutoff for a query that names merchants or not (None: not usable for it)."""
        return self.cutoff if self.intraday or not merchants else None


class StateCache:
    """The state last seen per reporting currency (one per API process, ``deps.Resources``).
    A query planned with it checks it in its own answer (``aggregates.grouped``), so the cache
    never makes an answer wrong; it only saves the round trip of reading the state first."""

    def __init__(self) -> None:
        self._seen: dict[str, State] = {}

    def get(self, reporting_currency: str) -> State | None:
        return self._seen.get(reporting_currency)

    def put(self, reporting_currency: str, seen: State) -> None:
        self._seen[reporting_currency] = seen


async def state(conn: Conn, reporting_currency: str) -> State:
    row = await conn.fetchrow(_STATE, reporting_currency)
    assert row is not None
    return State(
        row["cutoff"], row["data_as_of"], bool(row["intraday"]), row["token"], row["ranked"] or 0
    )


async def last_state(conn: Conn, reporting_currency: str, states: StateCache | None) -> State:
    """The state last seen in ``states``, else the current one (read and remembered)."""
    seen = states.get(reporting_currency) if states is not None else None
    if seen is None:
        seen = await state(conn, reporting_currency)
        if states is not None:
            states.put(reporting_currency, seen)
    return seen


def ceil_hour(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + H


def first_hour_of(day: date, tz: ZoneInfo) -> datetime:
    """The first whole UTC hour whose local date in ``tz`` is ``day`` or later."""
    h = ceil_hour(datetime.combine(day, time(0), tz))
    for _ in range(4):  # a DST change at midnight: step to the exact boundary
        if (h - H).astimezone(tz).date() >= day:
            h -= H
        elif h.astimezone(tz).date() < day:
            h += H
        else:
            break
    return h


@dataclass
class Plan:
    """Probes of the running totals at each bucket boundary, plus the ranges still read from
    hourly rows. ``HOURLY``: one probe per boundary. ``DAILY``: the day totals through the day
    before each boundary, plus the within-day totals (``INTRADAY``) through the hour before it
    when the boundary is not a UTC midnight."""

    table: str
    probes: list[datetime] | list[date]  # running totals through each of these
    labels: list[date | None]  # bucket label of the bucket ending at boundary i (i >= 1)
    hourly: list[tuple[datetime, datetime]] = field(default_factory=list)
    served: tuple[datetime, datetime] | None = None  # the span the totals answer
    intraday: list[datetime] = field(default_factory=list)  # DAILY: within-day probes
    intraday_bounds: list[int] = field(default_factory=list)  # boundary (1-based) of each

    @property
    def days(self) -> int:
        """Whole UTC days of the span the totals answer."""
        if self.served is None:
            return 0
        a, b = self.served
        first = ceil_hour(a).date() if ceil_hour(a).time() == time(0) else a.date() + D
        return max(0, (b.astimezone(UTC).date() - first).days)


def plan(
    start: datetime,
    end: datetime,
    cutoff: datetime,
    *,
    merchants: bool,
    day_buckets: ZoneInfo | None,
) -> Plan | None:
    """Where [start, end) comes from; None when the totals cannot help (the caller reads as
    before). ``merchants``: the query names merchants (keys or filters): daily and within-day
    totals. ``day_buckets``: group by local day in that zone (else one group per key)."""
    t0, tn = ceil_hour(start), ceil_hour(end)
    if t0 >= cutoff or t0 >= tn:
        return None
    bounds = [t0]
    labels: list[date | None] = [None]
    if day_buckets is not None:
        tz = day_buckets
        first_day = start.astimezone(tz).date()
        last_day = (end - timedelta(microseconds=1)).astimezone(tz).date()
        day = first_day
        while day < last_day:  # one boundary per local midnight inside the range
            day += D
            bounds.append(max(t0, min(tn, first_hour_of(day, tz))))
            labels.append(day - D)
        labels.append(last_day)
    else:
        labels.append(None)
    bounds.append(tn)
    capped = [min(b, cutoff).astimezone(UTC) for b in bounds]
    tail_start = max(start, cutoff)
    hourly = [(tail_start, end)] if tail_start < end else []
    served = (t0, min(tn, cutoff))
    if not merchants:
        return Plan(HOURLY, [b - H for b in capped], labels, hourly, served)
    # P(b) = daily(day(b) - 1) + intraday(b - 1 hour), the second only off midnight
    pl = Plan(DAILY, [b.date() - D for b in capped], labels, hourly, served)
    for i, b in enumerate(capped, 1):
        if b.time() != time(0):
            pl.intraday.append(b - H)
            pl.intraday_bounds.append(i)
    return pl


# Columns of a cell (the totals' key besides time), per table.
CELLS = {
    HOURLY: ("country", "channel", "currency"),
    DAILY: ("merchant_id", "country", "channel", "currency"),
}
COUNTS = (
    "tx_count",
    "succeeded_count",
    "failed_count",
    "pending_count",
    "payment_count",
    "refund_count",
)
CONVERTED = ("gross", "refunds", "fees")

# Key expressions of ``aggregates.Key.hourly`` that name a column of the totals, and the same
# over a probed row ``e`` (merchant '' is no merchant).
KEY_COLUMNS = {
    "merchant_id": "nullif(e.merchant_id, '')",
    "country::text": "e.country::text",
    "channel": "e.channel",
    "currency::text": "e.currency::text",
}


def probes_cte(
    pl: Plan,
    where: str,
    add: Callable[[Any], str],
    name: str = "pb",
    columns: Sequence[str] = (*COUNTS, *CONVERTED),
) -> str:
    """``pb`` (or ``name``): the running totals (``columns``, besides the cell and ``n_rows``)
    of every cell matching ``where`` at each boundary ``i`` (1-based; a DAILY boundary gives a
    day row and, off midnight, a within-day row); ``add`` binds a parameter and returns its
    placeholder.

    Each probe is a LATERAL subquery fenced by OFFSET 0, so it stays an index scan per probe
    whatever the planner guesses of the probe arrays: the API's generic plans take an array
    parameter for 10 elements and chose a sequential scan of the daily totals (45k rows at 1M
    hourly rows, 2M at 50M) over two index probes (docs/decisions/014-api-session-settings.md).
    """
    cols = ", ".join(f"x.{c}" for c in (*CELLS[pl.table], "n_rows", *columns))

    def probe(table: str, column: str) -> str:
        return (
            f"CROSS JOIN LATERAL (SELECT {cols} FROM {table} x "
            f"WHERE x.{column} = b.at {where} OFFSET 0) x"
        )

    if pl.table == HOURLY:
        return (
            f"{name} AS (SELECT b.i, b.label, x.* "
            f"FROM unnest({add(pl.probes)}::timestamptz[], {add(pl.labels)}::date[]) "
            f"WITH ORDINALITY AS b(at, label, i) {probe(HOURLY, 'hour')})"
        )
    return (
        f"{name} AS (SELECT b.i, x.* "
        f"FROM unnest({add(pl.probes)}::date[]) WITH ORDINALITY AS b(at, i) "
        f"{probe(DAILY, 'day')} "
        f"UNION ALL SELECT b.i, x.* "
        f"FROM unnest({add(pl.intraday)}::timestamptz[], {add(pl.intraday_bounds)}::int[]) "
        f"AS b(at, i) {probe(INTRADAY, 'hour')})"
    )


# The columns of an ``s`` branch after its keys, from ``diff(column)`` (the bucket's sum of a
# measure), in the column order of ``aggregates.grouped``'s hourly branches.
def _measures(diff: Callable[[str], str], n: str) -> str:
    counts = ", ".join(diff(c) for c in COUNTS[:5])
    return (
        f"e.currency, NULL::date AS fx_day, {n} AS n, {counts}, NULL::numeric, "
        f"{diff('refund_count')}, NULL::numeric, NULL::numeric, "
        f"{diff('gross')}, {diff('refunds')}, {diff('fees')}, true"
    )


def bucket_select(pl: Plan, key_exprs: Sequence[str], add: Callable[[Any], str]) -> str:
    """One ``s`` branch: per cell and bucket k = [boundary k, boundary k + 1), the totals at
    the later boundary minus those at the earlier one.

    HOURLY has one probe row per boundary and cell: each bucket is a row minus the row before
    it (a self-join). DAILY has one or two (day and within-day totals): one aggregate, where
    each probe row counts + in the bucket it ends and - in the bucket it starts, which also
    sums the two; grouping the probes per boundary first, then self-joining, cost 1.4x as much
    at 1M hourly rows. A sum ignores NULLs: converted sums stay NULL only where the currency
    has no rate at all."""
    keys = "".join(f"{k}, " for k in key_exprs)
    if pl.table == HOURLY:
        same = " AND ".join(f"f.{c} = e.{c}" for c in CELLS[HOURLY])
        return (
            f"SELECT {keys}"
            + _measures(lambda c: f"e.{c} - coalesce(f.{c}, 0)", "e.n_rows - coalesce(f.n_rows, 0)")
            + f" FROM pb e LEFT JOIN pb f ON f.i = e.i - 1 AND {same} WHERE e.i > 1"
        )
    cells = ", ".join(f"e.{c}" for c in CELLS[pl.table])
    buckets = len(pl.labels) - 1

    def diff(c: str) -> str:  # a negation, not a product: the converted numerics are long
        total = f"sum(CASE WHEN e.sign > 0 THEN e.{c} ELSE -e.{c} END)"
        return f"{total}::bigint" if c in COUNTS else total

    return (
        f"SELECT {keys}"
        + _measures(diff, diff("n_rows"))
        + f" FROM (SELECT t.k, ({add(pl.labels)}::date[])[t.k + 1] AS label, t.sign, p.* "
        f"FROM pb p CROSS JOIN LATERAL (VALUES (p.i - 1, 1), (p.i, -1)) AS t(k, sign) "
        f"WHERE t.k BETWEEN 1 AND {buckets:d}) e "
        f"GROUP BY e.k, e.label, {cells}"
    )
