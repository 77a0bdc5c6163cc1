"""One evaluation cycle of every active rule: set-based SQL, then the state machine, then writes.

Cost does not grow with the number of rules the way one query per rule would:

1. ``EVALUATE_SQL`` reads each *distinct* window once — only the merchants its rules name
   when none of them spans all merchants; minute buckets, except that windows of at least
   ``ALERTS_HOURLY_SPLIT_MINUTES`` read their whole hours from ``txn_hourly_agg`` and only
   their ragged ends from minutes, and windows beyond ``MINUTE_AGG_RETENTION_HOURS`` read
   hours only. It groups them per (merchant, country, currency, channel), converts volumes
   to the reporting currency at query time (``core.fx``), then rolls the groups up — a
   ``CUBE`` written as one ``GROUP BY`` per scope mask, each skipped unless an active rule
   has that mask — so that every scope a rule can have (which of the four dimensions it
   fixes: merchant, country, currency, channel; NULL = any) is one row. ``anomaly_count``
   rules count ``analytics_anomalies`` detected in the window, scoped by merchant only (the
   detector judges merchants and the platform, not countries or channels). Rules are then
   joined to those rows on (window, scope mask, scope values): 10,000 rules add a
   10,000-row join, not 10,000 scans. A window covers the buckets that start in
   ``[now - window, now)``.
2. The pure state machine (``state.step``) decides each rule's transition in Python.
3. Transitions are written back set-wise (``unnest`` arrays): alerts opened, alerts resolved,
   their history, the webhook outbox, and every rule's state row.

All of it runs in one transaction holding a transaction-level advisory lock, so two evaluators
never evaluate the same cycle at once (the second one skips the cycle and logs it); a unique
index allows one open alert per rule and the outbox is unique per (alert, url, status), so even
a racing writer could not open a second alert or queue a second notification for one firing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.alerts.freshness import ingestion_stale
from molam_workloads.alerts.payload import (
    alert_annotations,
    alert_labels,
    rule_scope,
    webhook_payload,
)
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.alerts.state import Action, State, compare, step
from molam_workloads.core import fx
from molam_workloads.core.metrics import (
    ALERT_CYCLE_SECONDS,
    ALERT_EVALUATIONS,
    ALERT_RULE_FAILURES,
    ALERTS_FIRED,
    ALERTS_FIRING,
)
from molam_workloads.core.rules import (
    RULE_MONEY_SUMS,
    RULE_SUMS,
    RULE_SUMS_SQL,
    metric_value_sql,
)

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy

CYCLE_LOCK = "molam.alerts.cycle"
OPEN_STATES = ("firing", "acknowledged")

# $1 now, $2 reporting currency, $3 longest window (minutes) answered from txn_minute_agg,
# $4 shortest window (minutes) whose whole hours are read from txn_hourly_agg.
_MEASURES = "\n           " + RULE_SUMS_SQL


def _read(table: str, col: str, src: str, *, narrow: bool) -> str:
    """Sums of one table over the parts of source ``src``, per window and dimensions."""
    merchant = "a.merchant_id = p.m AND " if narrow else ""
    return f"""
    SELECT p.w, a.merchant_id, a.country, a.currency, a.channel,
           date_trunc('day', a.{col}, 'UTC') AS day, {_MEASURES}
    FROM parts p
    JOIN {table} a ON {merchant}a.{col} >= p.f AND a.{col} < p.t
    WHERE p.src = '{src}' AND p.m IS {"NOT " if narrow else ""}NULL
    GROUP BY 1, 2, 3, 4, 5, 6"""


_DIMS = (
    ("merchant_id", "k_m", 8),
    ("country", "k_c", 4),
    ("currency", "k_cu", 2),
    ("channel", "k_ch", 1),
)


# The rule sums of ``converted`` summed per scope; a group whose money has no FX rate is
# counted as unconverted (the money metrics are then no data).
_ROLLUP_SUMS = ", ".join(
    [f"sum(c.{s}_rep) AS {s}" if s in RULE_MONEY_SUMS else f"sum(c.{s}) AS {s}" for s in RULE_SUMS]
    + [
        "count(*) FILTER (WHERE "
        + (" OR ".join(f"(c.{s}_rep IS NULL AND c.{s} <> 0)" for s in RULE_MONEY_SUMS) or "false")
        + ") AS unconverted"
    ]
)


# The rule sums of ``grouped``, and each money sum converted to the reporting currency ($2).
_CONVERTED_SUMS = ", ".join(
    [f"g.{s}" for s in RULE_SUMS]
    + [f"g.{s} * {fx.rate_expr('g', '$2')} AS {s}_rep" for s in RULE_MONEY_SUMS]
)


def _rollups() -> str:
    """The CUBE over the four dimensions, as one GROUP BY per scope mask (which dimensions a
    rule fixes), each skipped at run time unless some active rule has that mask."""
    branches = []
    for mask in range(16):
        keys = [
            f"coalesce(c.{col}, '') AS {key}" if mask & bit else f"''::text AS {key}"
            for col, key, bit in _DIMS
        ]
        group = ["c.w"] + [f"c.{col}" for col, _, bit in _DIMS if mask & bit]
        branches.append(
            f"""    SELECT c.w, {mask} AS mask, {", ".join(keys)},
           {_ROLLUP_SUMS}
    FROM converted c
    WHERE EXISTS (SELECT 1 FROM masks WHERE masks.mask = {mask})
    GROUP BY {", ".join(group)}"""
        )
    return "\n    UNION ALL\n".join(branches)


EVALUATE_SQL = f"""
WITH rules AS (
    SELECT r.id, r.name, r.source, r.runbook_url, r.metric, r.comparison, r.threshold,
           r.window_minutes, r.for_seconds, r.severity, r.scope_merchant_id, r.scope_country,
           r.scope_currency, r.scope_channel, r.no_data_state,
           (CASE WHEN r.scope_merchant_id IS NULL THEN 0 ELSE 8 END
            | CASE WHEN r.scope_country IS NULL THEN 0 ELSE 4 END
            | CASE WHEN r.scope_currency IS NULL THEN 0 ELSE 2 END
            | CASE WHEN r.scope_channel IS NULL THEN 0 ELSE 1 END) AS mask,
           coalesce(r.scope_merchant_id, '') AS k_m, coalesce(r.scope_country, '') AS k_c,
           coalesce(r.scope_currency, '') AS k_cu, coalesce(r.scope_channel, '') AS k_ch
    FROM analytics_alert_rules r
    WHERE r.is_active
),
needs AS (
    SELECT DISTINCT window_minutes AS w, scope_merchant_id AS m
    FROM rules WHERE metric <> 'anomaly_count'
),
wide AS (SELECT DISTINCT w FROM needs WHERE m IS NULL),
targets AS (
    -- What to read per window: every merchant if one of its rules spans them all, else only
    -- the merchants its rules name (an index range per merchant instead of the whole window).
    SELECT w, NULL::text AS m FROM wide
    UNION ALL
    SELECT n.w, n.m FROM needs n WHERE n.m IS NOT NULL AND n.w NOT IN (SELECT w FROM wide)
),
spans AS (
    SELECT t.w, t.m, b.lo, b.h_lo, b.h_hi,
           t.w > $3 AS hourly_only,
           (t.w <= $3 AND t.w >= $4 AND b.h_hi > b.h_lo) AS split
    FROM targets t
    CROSS JOIN LATERAL (
        SELECT x.lo,
               date_trunc('hour', x.lo, 'UTC')
                 + CASE WHEN x.lo > date_trunc('hour', x.lo, 'UTC') THEN interval '1 hour'
                        ELSE interval '0' END AS h_lo,
               date_trunc('hour', $1::timestamptz, 'UTC') AS h_hi
        FROM (SELECT $1::timestamptz - make_interval(mins => t.w) AS lo) x
    ) b
),
parts AS (
    -- [f, t) ranges of minute ('m') or hour ('h') buckets making up each window: a long
    -- window reads its whole hours from txn_hourly_agg and only its two ragged ends from
    -- txn_minute_agg; beyond the minute retention it reads hours only.
    SELECT w, m, 'm' AS src, lo AS f, CASE WHEN split THEN h_lo ELSE $1::timestamptz END AS t
    FROM spans WHERE NOT hourly_only
    UNION ALL SELECT w, m, 'm', h_hi, $1::timestamptz FROM spans WHERE split
    UNION ALL SELECT w, m, 'h', h_lo, h_hi FROM spans WHERE split
    UNION ALL SELECT w, m, 'h', lo, $1::timestamptz FROM spans WHERE hourly_only
),
grouped AS (
{_read("txn_minute_agg", "minute", "m", narrow=False)}
    UNION ALL
{_read("txn_minute_agg", "minute", "m", narrow=True)}
    UNION ALL
{_read("txn_hourly_agg", "hour", "h", narrow=False)}
    UNION ALL
{_read("txn_hourly_agg", "hour", "h", narrow=True)}
),
converted AS (
    SELECT g.w, g.merchant_id, g.country, g.currency, g.channel, {_CONVERTED_SUMS}
    FROM grouped g
    {fx.rate_join("g", "g.day", "$2")}
),
masks AS (
    SELECT DISTINCT mask FROM rules WHERE metric <> 'anomaly_count'
),
cube AS (
{_rollups()}
),
anomaly_windows AS (
    SELECT DISTINCT window_minutes AS w FROM rules WHERE metric = 'anomaly_count'
),
anomalies AS (
    SELECT aw.w, CASE WHEN GROUPING(an.merchant_id) = 0 THEN 8 ELSE 0 END AS mask,
           coalesce(an.merchant_id, '') AS k_m, count(*) AS n
    FROM anomaly_windows aw
    JOIN analytics_anomalies an
      ON an.detected_at >= $1::timestamptz - make_interval(mins => aw.w)
     AND an.detected_at < $1::timestamptz
    GROUP BY aw.w, ROLLUP (an.merchant_id)
)
SELECT r.id, r.name, r.source, r.runbook_url, r.metric, r.comparison, r.threshold,
       r.window_minutes, r.for_seconds, r.no_data_state,
       r.severity, r.scope_merchant_id, r.scope_country, r.scope_currency, r.scope_channel,
       {metric_value_sql("r.metric", "c", "an.n")} AS value,
       coalesce(c.unconverted, 0) > 0 AS unconverted,
       coalesce(s.state, 'inactive') AS state, s.pending_since, s.last_fired_at,
       s.current_alert_id
FROM rules r
LEFT JOIN cube c
       ON r.metric <> 'anomaly_count' AND c.w = r.window_minutes AND c.mask = r.mask
      AND c.k_m = r.k_m AND c.k_c = r.k_c AND c.k_cu = r.k_cu AND c.k_ch = r.k_ch
LEFT JOIN anomalies an
       ON r.metric = 'anomaly_count' AND an.w = r.window_minutes AND an.mask = (r.mask & 8)
      AND an.k_m = r.k_m
LEFT JOIN analytics_alert_rule_state s ON s.rule_id = r.id
"""


@dataclass(frozen=True)
class RuleEval:
    """One active rule with this cycle's metric value and its stored state."""

    id: uuid.UUID
    name: str
    source: str
    runbook_url: str | None
    metric: str
    comparison: str
    threshold: Decimal
    window_minutes: int
    for_seconds: int
    no_data_state: str  # ok | nodata | alerting: what a cycle without data means
    severity: str
    scope: dict[str, str | None]
    value: Decimal | None
    unconverted: bool
    state: State
    pending_since: datetime | None
    last_fired_at: datetime | None
    current_alert_id: int | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> RuleEval:
        value = r["value"]
        return cls(
            id=r["id"],
            name=r["name"],
            source=r["source"],
            runbook_url=r["runbook_url"],
            metric=r["metric"],
            comparison=r["comparison"],
            threshold=r["threshold"],
            window_minutes=r["window_minutes"],
            for_seconds=r["for_seconds"],
            no_data_state=r["no_data_state"],
            severity=r["severity"],
            scope=rule_scope(r),
            value=None if value is None else Decimal(value),
            unconverted=r["unconverted"],
            state=State(r["state"]),
            pending_since=r["pending_since"],
            last_fired_at=r["last_fired_at"],
            current_alert_id=r["current_alert_id"],
        )

    @property
    def scope_doc(self) -> dict[str, str]:
        """The scope as the rule document spells it (camelCase, set values only)."""
        names = {"merchant_id": "merchantId"}
        return {names.get(k, k): v for k, v in self.scope.items() if v}


@dataclass
class CycleReport:
    """What one cycle did; logged, returned to tests and the benchmark."""

    ran: bool = True  # False: another evaluator held the cycle lock
    rules: int = 0
    firing: int = 0
    pending: int = 0
    no_data: int = 0
    fired: list[int] = field(default_factory=list)  # alert ids opened
    resolved: list[int] = field(default_factory=list)  # alert ids closed
    notifications: int = 0  # outbox rows queued
    duration_s: float = 0.0


async def evaluate(conn: Conn, now: datetime, settings: AlertsSettings) -> list[RuleEval]:
    """Every active rule with its metric value over its window ending at ``now`` (one query)."""
    rows = await conn.fetch(
        EVALUATE_SQL,
        now,
        settings.reporting_currency,
        settings.minute_agg_retention_hours * 60,
        settings.alerts_hourly_split_minutes,
    )
    return [RuleEval.from_record(r) for r in rows]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


async def run_cycle(
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    now: datetime | None = None,
    *,
    stale: bool | None = None,
) -> CycleReport:
    """Evaluate every active rule once at ``now`` (default: the wall clock) and apply it.
    ``stale``: whether the ingestion is stale (default: asked, ``alerts.freshness``)."""
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    if stale is None:  # outside the cycle's transaction: it may wait for the broker
        stale = await ingestion_stale(pool, settings)
    for attempt in range(3):
        try:
            async with pool.acquire() as conn, conn.transaction():
                report = await _cycle(conn, settings, now, stale)
            break
        except asyncpg.ForeignKeyViolationError:
            # A rule was deleted between our read and our write: evaluate again without it.
            if attempt == 2:
                raise
            log.info("a rule was deleted during the cycle; evaluating again")
    report.duration_s = time.perf_counter() - started
    if report.ran:
        ALERT_EVALUATIONS.inc()
        ALERT_CYCLE_SECONDS.observe(report.duration_s)
        log.info(
            "alerts cycle: rules=%d firing=%d pending=%d no_data=%d fired=%d resolved=%d "
            "notifications_queued=%d duration_ms=%.1f",
            report.rules,
            report.firing,
            report.pending,
            report.no_data,
            len(report.fired),
            len(report.resolved),
            report.notifications,
            report.duration_s * 1000,
        )
    return report


async def _cycle(conn: Conn, settings: AlertsSettings, now: datetime, stale: bool) -> CycleReport:
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", CYCLE_LOCK):
        log.info("alerts cycle skipped: another evaluator is running one")
        return CycleReport(ran=False)

    # The planner cannot know how few distinct windows there are, so its cost estimates are
    # large enough to trigger JIT compilation, which costs far more than the query
    # (docs/decisions/019-alerts-jit-off.md). A roomier work_mem keeps the sorts in memory.
    await conn.execute("SET LOCAL jit = off")
    await conn.execute(f"SET LOCAL work_mem = '{settings.alerts_work_mem_mb}MB'")
    evals = await evaluate(conn, now, settings)
    report = CycleReport(rules=len(evals))
    to_fire: list[RuleEval] = []
    to_resolve: list[RuleEval] = []
    new_state: dict[uuid.UUID, tuple[State, datetime | None]] = {}
    no_data: dict[uuid.UUID, str] = {}  # rule -> why its value is unknown this cycle
    firing_by_severity: Counter[str] = Counter()
    unconverted = 0
    debug = log.isEnabledFor(logging.DEBUG)
    for ev in evals:
        if stale:  # the aggregates are behind: what they say now is not the traffic
            ev = replace(ev, value=None)
            no_data[ev.id] = "ingestion_stale"
        elif ev.value is None:
            no_data[ev.id] = "no_fx_rate" if ev.unconverted else "no_denominator"
        cond = compare(ev.value, ev.comparison, ev.threshold)
        if cond is None:
            report.no_data += 1
        unconverted += ev.unconverted
        st = step(ev.state, ev.pending_since, cond, now, ev.for_seconds, ev.no_data_state)
        new_state[ev.id] = (st.state, st.pending_since)
        if debug:  # LOG_LEVEL=DEBUG: every rule's value, for "Alerts Not Firing"
            log.debug(
                "rule %s: %s over %d min %s = %s, %s %s -> %s %s",
                ev.name,
                ev.metric,
                ev.window_minutes,
                ev.scope_doc or "all",
                "no data" if ev.value is None else ev.value,
                ev.comparison,
                ev.threshold,
                st.state.value,
                "" if st.action is Action.none else st.action.value,
            )
        if st.action is not Action.none:
            log.info(
                "alert %s: rule=%s severity=%s %s=%s %s %s window=%dmin scope=%s",
                "firing" if st.action is Action.fire else "resolved",
                ev.name,
                ev.severity,
                ev.metric,
                "no data" if ev.value is None else ev.value,
                ev.comparison,
                ev.threshold,
                ev.window_minutes,
                ev.scope_doc or "all",
            )
        if st.action is Action.fire:
            to_fire.append(ev)
        elif st.action is Action.resolve:
            to_resolve.append(ev)
        if st.state is State.firing:
            report.firing += 1
            firing_by_severity[ev.severity] += 1
        elif st.state is State.pending:
            report.pending += 1
    if unconverted:
        ALERT_RULE_FAILURES.labels("no_fx_rate").inc(unconverted)
        log.warning(
            "%d rule(s) have no data: volumes in a currency without an FX rate to %s "
            "(load rates with 'molam-analytics fx load')",
            unconverted,
            settings.reporting_currency,
        )

    opened, opened_new = await _fire(conn, now, to_fire)
    report.fired = opened_new
    closed = await _resolve_rules(conn, now, [ev.id for ev in to_resolve])
    closed += await _resolve_orphans(conn, now)
    report.resolved = [a["id"] for a in closed]
    # Due at once (database clock): the notifier sends them after this transaction commits.
    report.notifications = await _queue(conn, settings, "firing", opened_new)
    report.notifications += await _queue(conn, settings, "resolved", report.resolved)
    report.notifications += await _queue(
        conn, settings, "resolved", await _resolved_by_hand(conn, now)
    )

    # Every evaluated rule's state row, in one statement.
    ids: list[uuid.UUID] = []
    states: list[str] = []
    pendings: list[datetime | None] = []
    values: list[Decimal | None] = []
    fired_at: list[datetime | None] = []
    current: list[int | None] = []
    reasons: list[str | None] = []
    for ev in evals:
        state, pending_since = new_state[ev.id]
        ids.append(ev.id)
        states.append(state.value)
        pendings.append(pending_since)
        values.append(None if ev.id in no_data else ev.value)
        reasons.append(no_data.get(ev.id))
        if ev.id in opened:
            fired_at.append(now)
            current.append(opened[ev.id])
        else:
            fired_at.append(ev.last_fired_at)
            current.append(ev.current_alert_id if state is State.firing else None)
    await conn.execute(
        """
        INSERT INTO analytics_alert_rule_state AS s (
            rule_id, state, pending_since, last_value, last_evaluated_at, last_fired_at,
            current_alert_id, no_data_reason)
        SELECT u.rule_id, u.state, u.pending_since, u.last_value, $5, u.last_fired_at,
               u.current_alert_id, u.no_data_reason
        FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::numeric[],
                    $6::timestamptz[], $7::bigint[], $8::text[])
             AS u(rule_id, state, pending_since, last_value, last_fired_at, current_alert_id,
                  no_data_reason)
        ON CONFLICT (rule_id) DO UPDATE SET
            state = excluded.state, pending_since = excluded.pending_since,
            last_value = excluded.last_value, last_evaluated_at = excluded.last_evaluated_at,
            last_fired_at = excluded.last_fired_at, current_alert_id = excluded.current_alert_id,
            no_data_reason = excluded.no_data_reason
        """,
        ids,
        states,
        pendings,
        values,
        now,
        fired_at,
        current,
        reasons,
    )
    for sev in ("info", "warning", "critical"):
        ALERTS_FIRING.labels(sev).set(firing_by_severity[sev])
    return report


async def _fire(
    conn: Conn, now: datetime, evs: list[RuleEval]
) -> tuple[dict[uuid.UUID, int], list[int]]:
    """Open one alert per rule that starts firing.

    Returns rule id -> its open alert id, and the ids of the alerts opened by this call.
    """
    if not evs:
        return {}, []
    labels, annotations, scopes = [], [], []
    for ev in evs:
        labels.append(
            _dumps(
                alert_labels(
                    rule_name=ev.name,
                    source=ev.source,
                    metric=ev.metric,
                    severity=ev.severity,
                    scope=ev.scope,
                )
            )
        )
        annotations.append(
            _dumps(
                alert_annotations(
                    metric=ev.metric,
                    comparison=ev.comparison,
                    threshold=ev.threshold,
                    value=ev.value,
                    window_minutes=ev.window_minutes,
                    scope=ev.scope,
                    runbook_url=ev.runbook_url,
                )
            )
        )
        scopes.append(_dumps(ev.scope_doc))
    # ON CONFLICT: the one-open-alert-per-rule index; a rule that somehow still has an open
    # alert keeps it instead of getting a second one.
    rows = await conn.fetch(
        """
        INSERT INTO analytics_alerts AS a (
            rule_id, rule_name, metric, severity, state, value, threshold, comparison, scope,
            started_at, labels, annotations, webhooks, window_minutes, alertmanagers)
        SELECT r.id, r.name, r.metric, r.severity, 'firing', u.value, r.threshold,
               r.comparison, u.scope, $1, u.labels, u.annotations, r.webhooks, r.window_minutes,
               r.alertmanagers
        FROM unnest($2::uuid[], $3::numeric[], $4::jsonb[], $5::jsonb[], $6::jsonb[])
             AS u(rule_id, value, scope, labels, annotations)
        JOIN analytics_alert_rules r ON r.id = u.rule_id
        ON CONFLICT DO NOTHING
        RETURNING a.id, a.rule_id, a.severity
        """,
        now,
        [ev.id for ev in evs],
        [ev.value for ev in evs],
        scopes,
        labels,
        annotations,
    )
    opened = {r["rule_id"]: r["id"] for r in rows}
    new_ids = list(opened.values())
    if opened:
        await conn.execute(
            """
            INSERT INTO analytics_alert_events (alert_id, at, event, actor, detail)
            SELECT a.id, $2, 'fired', 'evaluator',
                   jsonb_build_object('value', a.value, 'threshold', a.threshold,
                                      'comparison', a.comparison)
            FROM analytics_alerts a WHERE a.id = ANY($1::bigint[])
            """,
            new_ids,
            now,
        )
        for r in rows:
            ALERTS_FIRED.labels(r["severity"]).inc()
    missed = [ev for ev in evs if ev.id not in opened]
    if missed:
        # Adopt the open alert left by an earlier run rather than opening a duplicate.
        for r in await conn.fetch(
            "SELECT id, rule_id FROM analytics_alerts "
            "WHERE rule_id = ANY($1::uuid[]) AND state = ANY($2::text[])",
            [ev.id for ev in missed],
            list(OPEN_STATES),
        ):
            opened[r["rule_id"]] = r["id"]
    return opened, new_ids


async def _resolve_rules(
    conn: Conn, now: datetime, rule_ids: list[uuid.UUID]
) -> list[asyncpg.Record]:
    if not rule_ids:
        return []
    rows = await conn.fetch(
        """
        UPDATE analytics_alerts SET state = 'resolved', resolved_at = $2, resolved_by = 'evaluator'
        WHERE rule_id = ANY($1::uuid[]) AND state = ANY($3::text[])
        RETURNING id
        """,
        rule_ids,
        now,
        list(OPEN_STATES),
    )
    await _history(conn, [r["id"] for r in rows], now, "condition cleared")
    return list(rows)


async def _resolve_orphans(conn: Conn, now: datetime) -> list[asyncpg.Record]:
    """Open alerts whose rule was deleted or disabled: resolve them, reset the rule's state."""
    rows = await conn.fetch(
        """
        UPDATE analytics_alerts a SET state = 'resolved', resolved_at = $1,
               resolved_by = 'evaluator'
        WHERE a.state = ANY($2::text[])
          AND NOT EXISTS (SELECT 1 FROM analytics_alert_rules r
                          WHERE r.id = a.rule_id AND r.is_active)
        RETURNING a.id, a.rule_id
        """,
        now,
        list(OPEN_STATES),
    )
    if rows:
        await _history(
            conn,
            [r["id"] for r in rows if r["rule_id"] is not None],
            now,
            "rule disabled",
        )
        await _history(conn, [r["id"] for r in rows if r["rule_id"] is None], now, "rule deleted")
        log.info("resolved %d alert(s) of deleted or disabled rules", len(rows))
    await conn.execute(
        """
        UPDATE analytics_alert_rule_state s
        SET state = 'inactive', pending_since = NULL, current_alert_id = NULL
        FROM analytics_alert_rules r
        WHERE r.id = s.rule_id AND NOT r.is_active AND s.state <> 'inactive'
        """
    )
    return list(rows)


# An alert resolved through the API gets its "resolved" webhook from the next cycle: the
# evaluator owns the webhook settings and the outbox, whose (alert, url, status) key queues it
# once. Looked for over this long, so a cycle skipped or late still sends it.
RESOLVED_BY_HAND_WITHIN = timedelta(days=1)


async def _resolved_by_hand(conn: Conn, now: datetime) -> list[int]:
    """Alerts resolved through the API lately whose "resolved" notification is not queued."""
    rows = await conn.fetch(
        """
        SELECT a.id FROM analytics_alerts a
        WHERE a.state = 'resolved' AND a.resolved_by <> 'evaluator'
          AND a.resolved_at > $1
          AND NOT EXISTS (SELECT 1 FROM analytics_alert_notifications n
                          WHERE n.alert_id = a.id AND n.status = 'resolved')
        """,
        now - RESOLVED_BY_HAND_WITHIN,
    )
    return [r["id"] for r in rows]


async def _history(conn: Conn, alert_ids: list[int], now: datetime, reason: str) -> None:
    if alert_ids:
        await conn.execute(
            """
            INSERT INTO analytics_alert_events (alert_id, at, event, actor, detail)
            SELECT unnest($1::bigint[]), $2, 'resolved', 'evaluator',
                   jsonb_build_object('reason', $3::text)
            """,
            alert_ids,
            now,
            reason,
        )


async def _queue(
    conn: Conn,
    settings: AlertsSettings,
    status: str,
    alert_ids: list[int],
) -> int:
    """Put one outbox row per (alert, webhook) for the notifier; resolved ones honour
    ``sendResolved``. Unique per (alert, url, status): queued once per firing."""
    if not alert_ids:
        return 0
    alerts = await conn.fetch(
        """
        SELECT id, labels::text, annotations::text, webhooks::text, started_at, resolved_at
        FROM analytics_alerts WHERE id = ANY($1::bigint[])
        """,
        alert_ids,
    )
    ids, urls, payloads = [], [], []
    for a in alerts:
        hooks = json.loads(a["webhooks"])
        if status == "resolved":
            hooks = [h for h in hooks if h.get("sendResolved", True)]
        if not hooks:
            continue
        body = _dumps(
            webhook_payload(
                status=status,
                alert_id=a["id"],
                labels=json.loads(a["labels"]),
                annotations=json.loads(a["annotations"]),
                starts_at=a["started_at"],
                ends_at=a["resolved_at"] if status == "resolved" else None,
                external_url=settings.alerts_external_url,
                receiver=settings.alerts_receiver,
            )
        )
        for url in dict.fromkeys(h["url"] for h in hooks):
            ids.append(a["id"])
            urls.append(url)
            payloads.append(body)
    if not ids:
        return 0
    result: str = await conn.execute(
        """
        INSERT INTO analytics_alert_notifications (alert_id, url, status, payload)
        SELECT u.alert_id, u.url, $4, u.payload::jsonb
        FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(alert_id, url, payload)
        ON CONFLICT (alert_id, url, status) DO NOTHING
        """,
        ids,
        urls,
        payloads,
        status,
    )
    return int(result.rsplit(" ", 1)[-1])
