"""Backtest of an alert rule: when it would have fired and resolved over a past time range.

One SQL statement replays the rule the way the evaluator runs it, set-based:

1. The rule's scoped sums per bucket (``core.rules.RULE_SUMS_SQL``), volumes converted to the
   reporting currency per (currency, day) as the evaluator does (``core.fx``).
2. Gaps filled with zero buckets, then a window function sums each evaluation's window: an
   evaluation at instant ``t`` covers the buckets that start in ``[t - window, t)``, like a cycle
   at ``now = t``. Its value is ``core.rules.metric_value_sql``, the evaluator's own formula.
3. The ``for`` state machine as gaps-and-islands: a run of consecutive evaluations whose
   condition holds starts pending at its first instant, fires at the first instant at least
   ``for`` after it, and resolves at the first evaluation where the condition no longer holds.

Resolution: one evaluation per minute (the evaluator's default interval) where
``txn_minute_agg`` still holds the window's minutes; before that (minute buckets are kept
``MINUTE_AGG_RETENTION_HOURS``), one evaluation per hour over ``txn_hourly_agg``, the window
rounded up to whole hours. Each firing says which resolution it was found at. A rule that
already held at ``from`` starts pending at ``from``, as a freshly started evaluator would.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.core import fx
from molam_workloads.core.rules import (
    RULE_MONEY_SUMS,
    RULE_SUMS,
    RULE_SUMS_SQL,
    comparison_sql,
    metric_value_sql,
)

Conn = asyncpg.Connection | PoolConnectionProxy

MAX_RANGE = timedelta(days=31)  # the longest range one backtest replays
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
_SCOPE = (
    ("scope_merchant_id", "merchant_id"),
    ("scope_country", "country"),
    ("scope_currency", "currency"),
    ("scope_channel", "channel"),
)
# The rule's columns a backtest needs (``analytics_alert_rules``).
RULE_COLUMNS = (
    "name, metric, comparison, threshold, window_minutes, for_seconds, no_data_state, "
    "scope_merchant_id, scope_country, scope_currency, scope_channel"
)


@dataclass(frozen=True)
class Firing:
    """One interval during which the rule would have been firing."""

    pending_since: datetime
    fired_at: datetime
    resolved_at: datetime | None  # None: still firing at the end of the range
    value: Decimal | None  # the value that fired it (None: no data, with noDataState alerting)
    peak: Decimal | None  # the value furthest past the threshold while it fired
    evaluations: int  # evaluations while firing
    resolution: str  # "minute" or "hour": how often the rule was evaluated there

    def document(self) -> dict[str, Any]:
        return {
            "pendingSince": _iso(self.pending_since),
            "firedAt": _iso(self.fired_at),
            "resolvedAt": _iso(self.resolved_at),
            "value": _num(self.value),
            "peak": _num(self.peak),
            "evaluations": self.evaluations,
            "resolution": self.resolution,
        }


@dataclass(frozen=True)
class Backtest:
    rule: str
    start: datetime
    end: datetime
    minutes_from: datetime | None  # evaluated per minute from this instant (None: never)
    evaluations: int
    no_data: int  # evaluations without a value (a rate without denominator, no FX rate)
    firings: list[Firing] = field(default_factory=list)
    duration_ms: float = 0.0

    def document(self, *, max_firings: int | None = None) -> dict[str, Any]:
        """camelCase, as the API and the AlertRule status show it; ``max_firings`` keeps the
        latest ones only (``firingsTotal`` still counts them all)."""
        firings = self.firings if max_firings is None else self.firings[-max_firings:]
        return {
            "from": _iso(self.start),
            "to": _iso(self.end),
            "minutesFrom": _iso(self.minutes_from),
            "evaluations": self.evaluations,
            "noData": self.no_data,
            "firingsTotal": len(self.firings),
            "firings": [f.document() for f in firings],
            "durationMs": round(self.duration_ms, 1),
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(v: Decimal | None) -> float | None:
    return None if v is None else float(v)


def _floor(t: datetime, unit: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((t - epoch) // unit) * unit


def _ceil(t: datetime, unit: timedelta) -> datetime:
    f = _floor(t, unit)
    return f if f == t else f + unit


# The rule sums per bucket, money converted at the rate of its (currency, day); a bucket's
# currency without a rate is unconverted (the money metrics are then no data).
_PER_SUMS = ", ".join(
    [
        f"sum(s.{s} * r.rate) AS {s}" if s in RULE_MONEY_SUMS else f"sum(s.{s}) AS {s}"
        for s in RULE_SUMS
    ]
    + [
        "count(*) FILTER (WHERE r.rate IS NULL AND ("
        + (" OR ".join(f"s.{s} <> 0" for s in RULE_MONEY_SUMS) or "false")
        + ")) AS unconverted"
    ]
)


def _sums(table: str, col: str, res: str, lo: int, hi: int, scope: list[tuple[str, int]]) -> str:
    where = "".join(f" AND a.{column} = ${n}" for column, n in scope)
    return f"""
    SELECT '{res}' AS res, a.{col} AS b, a.currency, date_trunc('day', a.{col}, 'UTC') AS day,
           {RULE_SUMS_SQL}, 0::bigint AS n
    FROM {table} a
    WHERE a.{col} >= ${lo} AND a.{col} < ${hi}{where}
    GROUP BY 2, 3"""


def _anomalies(res: str, unit: str, lo: int, hi: int, merchant: int | None) -> str:
    where = "" if merchant is None else f" AND an.merchant_id = ${merchant}"
    zeros = ", ".join(f"0 AS {s}" for s in RULE_SUMS)
    return f"""
    SELECT '{res}' AS res, date_trunc('{unit}', an.detected_at, 'UTC') AS b,
           NULL::bpchar AS currency, NULL::timestamptz AS day, {zeros}, count(*) AS n
    FROM analytics_anomalies an
    WHERE an.detected_at >= ${lo} AND an.detected_at < ${hi}{where}
    GROUP BY 2"""


def backtest_sql(rule: asyncpg.Record | dict[str, Any], minute_rows: int, hour_rows: int) -> str:
    """The statement for this rule's scope: conditions only on the dimensions it fixes (so the
    indexes apply); ``minute_rows`` / ``hour_rows`` buckets per window at each resolution.

    Parameters: $1 metric, $2 reporting currency, $3 comparison, $4 threshold, $5 for
    (seconds), $6 what a no-data evaluation counts as (true: the condition holds), $7-$9 the
    minute buckets read, the first and last minute instants; $10-$12 the same for hours; then
    the scope values.
    """
    scope: list[tuple[str, int]] = []
    n = 13
    for key, column in _SCOPE:
        if rule[key] is not None:
            scope.append((column, n))
            n += 1
    if rule["metric"] == "anomaly_count":
        # The detector judges merchants and the platform: only a merchant scope applies.
        merchant = next((i for c, i in scope if c == "merchant_id"), None)
        sums = (
            _anomalies("m", "minute", 7, 9, merchant)
            + "\n    UNION ALL"
            + _anomalies("h", "hour", 10, 12, merchant)
        )
    else:
        sums = (
            _sums("txn_minute_agg", "minute", "m", 7, 9, scope)
            + "\n    UNION ALL"
            + _sums("txn_hourly_agg", "hour", "h", 10, 12, scope)
        )
    filled = ", ".join(f"coalesce(p.{s}, 0) AS {s}" for s in (*RULE_SUMS, "unconverted", "n"))
    windowed = ",\n           ".join(
        f"CASE d.res WHEN 'm' THEN sum(d.{s}) OVER wm ELSE sum(d.{s}) OVER wh END AS {s}"
        for s in (*RULE_SUMS, "unconverted", "n")
    )
    return f"""
WITH sums AS ({sums}
),
rates AS (
    SELECT k.currency, k.day, {fx.rate_expr("k", "$2")} AS rate
    FROM (SELECT DISTINCT currency, day FROM sums WHERE currency IS NOT NULL) k
    {fx.rate_join("k", "k.day", "$2")}
),
per AS (
    SELECT s.res, s.b, {_PER_SUMS}, sum(s.n) AS n
    FROM sums s
    LEFT JOIN rates r ON r.currency = s.currency AND r.day = s.day
    GROUP BY 1, 2
),
dense AS (
    -- Every bucket, empty ones as zeros, so a window is a fixed number of rows.
    SELECT k.res, k.b, {filled}
    FROM (SELECT 'm' AS res, generate_series($7::timestamptz, $9::timestamptz - interval '1 minute',
                                             interval '1 minute') AS b
          UNION ALL
          SELECT 'h', generate_series($10::timestamptz, $12::timestamptz - interval '1 hour',
                                      interval '1 hour')) k
    LEFT JOIN per p ON p.res = k.res AND p.b = k.b
),
windowed AS (
    SELECT d.res,
           d.b + CASE d.res WHEN 'm' THEN interval '1 minute' ELSE interval '1 hour' END AS t,
           {windowed}
    FROM dense d
    WINDOW wm AS (PARTITION BY d.res ORDER BY d.b
                  ROWS BETWEEN {minute_rows - 1} PRECEDING AND CURRENT ROW),
           wh AS (PARTITION BY d.res ORDER BY d.b
                  ROWS BETWEEN {hour_rows - 1} PRECEDING AND CURRENT ROW)
),
evals AS (
    SELECT w.t, w.res, {metric_value_sql("$1::text", "w", "w.n")} AS value
    FROM windowed w
    WHERE (w.res = 'm' AND w.t >= $8) OR (w.res = 'h' AND w.t >= $11)
),
conds AS (
    SELECT e.t, e.res, e.value,
           coalesce({comparison_sql("$3::text", "e.value", "$4::numeric")}, $6::boolean) AS cond
    FROM evals e
),
islands AS (
    -- Each evaluation where the condition fails starts a new group; the evaluations where it
    -- holds after it are that group's run.
    SELECT c.*, count(*) FILTER (WHERE NOT c.cond) OVER (ORDER BY c.t) AS grp FROM conds c
),
runs AS (
    SELECT i.*, min(i.t) FILTER (WHERE i.cond) OVER (PARTITION BY i.grp) AS since
    FROM islands i
),
spans AS (
    SELECT r.grp, min(r.since) AS since,
           min(r.t) FILTER (WHERE r.cond AND r.t >= r.since + make_interval(secs => $5))
               AS fired_at,
           lead(min(r.t)) OVER (ORDER BY r.grp) AS resolved_at
    FROM runs r
    GROUP BY r.grp
),
firings AS (
    SELECT s.since, s.fired_at, s.resolved_at,
           (array_agg(r.value ORDER BY r.t))[1] AS value,
           CASE WHEN $3::text IN ('gt', 'gte') THEN max(r.value) ELSE min(r.value) END AS peak,
           count(*) AS evaluations,
           (array_agg(r.res ORDER BY r.t))[1] AS res
    FROM spans s
    JOIN runs r ON r.grp = s.grp AND r.cond AND r.t >= s.fired_at
    WHERE s.fired_at IS NOT NULL
    GROUP BY s.grp, s.since, s.fired_at, s.resolved_at
)
SELECT (SELECT count(*) FROM evals) AS evaluations,
       (SELECT count(*) FROM evals WHERE value IS NULL) AS no_data,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                     'since', f.since, 'fired_at', f.fired_at, 'resolved_at', f.resolved_at,
                     'value', f.value, 'peak', f.peak, 'evaluations', f.evaluations,
                     'res', f.res) ORDER BY f.fired_at)
                 FROM firings f), '[]')::text AS firings
"""


async def load_rule(conn: Conn, name: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {RULE_COLUMNS} FROM analytics_alert_rules WHERE name = $1", name
    )
    return row


async def backtest(
    conn: Conn,
    rule: asyncpg.Record | dict[str, Any],
    start: datetime,
    end: datetime,
    *,
    reporting_currency: str,
    now: datetime | None = None,
) -> Backtest:
    """Replay ``rule`` (a row of ``RULE_COLUMNS``) over ``[start, end]`` (``end`` at most
    ``now``); raises ``ValueError`` for an empty or too long range."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    start = _ceil(start, MINUTE)
    end = _floor(min(end, now), MINUTE)
    if end <= start:
        raise ValueError("'to' must be after 'from' (and 'from' in the past)")
    if end - start > MAX_RANGE:
        raise ValueError(f"a backtest covers at most {MAX_RANGE.days} days")
    window = timedelta(minutes=rule["window_minutes"])
    hours = math.ceil(rule["window_minutes"] / 60)
    if rule["metric"] == "anomaly_count":
        first_minute: datetime | None = start - window  # anomalies are kept to the second
    else:
        # The oldest minute may be half purged by housekeeping: start one minute later.
        oldest = await conn.fetchval("SELECT min(minute) FROM txn_minute_agg")
        first_minute = None if oldest is None else oldest + MINUTE
    if first_minute is None:
        m_first = end + MINUTE
    else:
        m_first = max(start, _ceil(first_minute, MINUTE) + window)
    m_lo, m_end = (m_first - window, end) if m_first <= end else (end, end)
    h_first = _ceil(start, HOUR)
    h_last = _floor(min(m_first - MINUTE, end), HOUR)
    h_lo, h_end = (h_first - hours * HOUR, h_last) if h_last >= h_first else (h_first, h_first)
    sql = backtest_sql(rule, rule["window_minutes"], hours)
    no_data_state = rule["no_data_state"]
    scope = [rule[k] for k, _ in _SCOPE if rule[k] is not None]
    async with conn.transaction():
        # As in the evaluator: the planner's estimates over generated series would pay for a
        # JIT compilation that costs more than the query (docs/decisions/019-alerts-jit-off.md).
        await conn.execute("SET LOCAL jit = off")
        row = await conn.fetchrow(
            sql,
            rule["metric"],
            reporting_currency,
            rule["comparison"],
            rule["threshold"],
            rule["for_seconds"],
            no_data_state == "alerting",
            m_lo,
            m_first,
            m_end,
            h_lo,
            h_first,
            h_end,
            *scope,
        )
    assert row is not None
    firings = [
        Firing(
            pending_since=_ts(f["since"]),
            fired_at=_ts(f["fired_at"]),
            resolved_at=None if f["resolved_at"] is None else _ts(f["resolved_at"]),
            value=None if f["value"] is None else Decimal(str(f["value"])),
            peak=None if f["peak"] is None else Decimal(str(f["peak"])),
            evaluations=f["evaluations"],
            resolution="minute" if f["res"] == "m" else "hour",
        )
        for f in json.loads(row["firings"], parse_float=Decimal)
    ]
    return Backtest(
        rule=rule["name"],
        start=start,
        end=end,
        minutes_from=m_first if m_first <= end else None,
        evaluations=row["evaluations"],
        no_data=row["no_data"],
        firings=firings,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)
