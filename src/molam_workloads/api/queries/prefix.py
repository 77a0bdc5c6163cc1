"""Ranges from running totals (migration 070): a few index probes per group, whatever the length.

``analytics_prefix_hourly`` (merchants folded, per country, channel and currency) answers
whatever names no merchant, hour by hour, so partial days and day buckets in any time zone
come from it too. ``analytics_prefix_daily`` (per merchant, country, channel and currency)
answers whole UTC days of whatever names merchants; their partial first and last days come
from ``txn_hourly_agg``. Hours at or after the totals' cutoff always come from
``txn_hourly_agg``.

A bucket [t_i, t_i+1) of a cell is the running total through t_i+1 - step minus the one through
t_i - step, each probed at the totals' last hour (day) at most: the tables are dense from a
cell's first hour (day) to the last one, so a cell without a row at the earlier probe had
nothing before it. ``plan`` computes the probes; ``aggregates.grouped`` sums what they give
with the hourly rows of the remaining parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from molam_workloads.api.queries import Conn

HOURLY = "analytics_prefix_hourly"
DAILY = "analytics_prefix_daily"
H = timedelta(hours=1)
D = timedelta(days=1)

# The totals' cutoff if they were built for this reporting currency with the current FX rates
# (else NULL: they are not used), and the data's event-time watermark: the end of the newest
# minute (else hour) bucket counted, never ahead of the clock.
_STATE = """
SELECT (SELECT s.cutoff FROM analytics_prefix_state s JOIN analytics_fx_version v
          ON v.version = s.fx_version WHERE s.quote = $1::bpchar) AS cutoff,
       (SELECT CASE WHEN w IS NOT NULL THEN least(w, now()) END  -- least() skips a NULL
        FROM (SELECT coalesce((SELECT max(minute) FROM txn_minute_agg) + interval '1 minute',
                              (SELECT max(hour) FROM txn_hourly_agg) + interval '1 hour') AS w)
             newest) AS data_as_of
"""


@dataclass(frozen=True)
class State:
    cutoff: datetime | None  # the totals hold the hours before it; None: not usable
    data_as_of: datetime | None


async def state(conn: Conn, reporting_currency: str) -> State:
    row = await conn.fetchrow(_STATE, reporting_currency)
    assert row is not None
    return State(row["cutoff"], row["data_as_of"])


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
    """Probes of one prefix table, plus the ranges still read from hourly rows."""

    table: str
    probes: list[datetime] | list[date]  # running totals through each of these
    labels: list[date | None]  # bucket label of the bucket ending at probe i (i >= 1)
    hourly: list[tuple[datetime, datetime]] = field(default_factory=list)
    served: tuple[datetime, datetime] | None = None  # the span the totals answer

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
    before). ``merchants``: the query names merchants (keys or filters): daily totals.
    ``day_buckets``: group by local day in that zone (else one group per key)."""
    if merchants:
        return _plan_daily(start, end, cutoff, day_buckets)
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
    probes = [min(b, cutoff) - H for b in bounds]
    tail_start = max(start, cutoff)
    hourly = [(tail_start, end)] if tail_start < end else []
    return Plan(HOURLY, probes, labels, hourly, (t0, min(tn, cutoff)))


def _plan_daily(
    start: datetime, end: datetime, cutoff: datetime, day_buckets: ZoneInfo | None
) -> Plan | None:
    first = start.astimezone(UTC).date()
    if datetime.combine(first, time(0), UTC) < start:
        first += D
    last = min(end.astimezone(UTC).date(), cutoff.astimezone(UTC).date())  # exclusive
    if last <= first:
        return None
    if day_buckets is not None and not _utc_days(day_buckets, first, last):
        return None
    if day_buckets is not None:
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        labels: list[date | None] = [None, *days[:-1]]
    else:
        days, labels = [first, last], [None, None]
    hourly = []
    first_ts = datetime.combine(first, time(0), UTC)
    last_ts = datetime.combine(last, time(0), UTC)
    if start < first_ts:
        hourly.append((start, first_ts))
    if last_ts < end:
        hourly.append((last_ts, end))
    return Plan(DAILY, [d - D for d in days], labels, hourly, (first_ts, last_ts))


def _utc_days(tz: ZoneInfo, first: date, last: date) -> bool:
    """Local days in ``tz`` are UTC days over [first, last] (plus a day either side)."""
    day = first - D
    while day <= last + D:
        if tz.utcoffset(datetime.combine(day, time(0))) != timedelta(0):
            return False
        day += D
    return True


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


def probes_cte(pl: Plan, where: str, probes_param: str, labels_param: str) -> str:
    """``pb``: the running totals of every cell matching ``where`` at each probe, numbered."""
    time_col, typ = ("hour", "timestamptz") if pl.table == HOURLY else ("day", "date")
    cols = ", ".join(f"x.{c}" for c in (*CELLS[pl.table], "n_rows", *COUNTS, *CONVERTED))
    return (
        f"pb AS (SELECT b.i, b.label, {cols} "
        f"FROM unnest({probes_param}::{typ}[], {labels_param}::date[]) "
        f"WITH ORDINALITY AS b(at, label, i) "
        f"JOIN {pl.table} x ON x.{time_col} = b.at WHERE true {where})"
    )


def bucket_select(pl: Plan, key_exprs: Sequence[str]) -> str:
    """One ``s`` branch: per cell and bucket, the later probe minus the earlier one, in the
    column order of ``aggregates.grouped``'s hourly branches."""
    same = " AND ".join(f"f.{c} = e.{c}" for c in CELLS[pl.table])
    keys = "".join(f"{k}, " for k in key_exprs)

    def diff(c: str) -> str:
        return f"e.{c} - coalesce(f.{c}, 0)"

    counts = {c: diff(c) for c in COUNTS}
    return (
        f"SELECT {keys}e.currency, NULL::date AS fx_day, {diff('n_rows')} AS n, "
        f"{counts['tx_count']}, {counts['succeeded_count']}, {counts['failed_count']}, "
        f"{counts['pending_count']}, {counts['payment_count']}, NULL::numeric, "
        f"{counts['refund_count']}, NULL::numeric, NULL::numeric, "
        f"{diff('gross')}, {diff('refunds')}, {diff('fees')}, true "
        f"FROM pb e LEFT JOIN pb f ON f.i = e.i - 1 AND {same} WHERE e.i > 1"
    )
