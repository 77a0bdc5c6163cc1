"""The backtest (core.backtest) against real PostgreSQL: it finds the firings the evaluator
finds when run every minute over the same data, and it reads hours where minutes are gone."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.backtest import backtest, load_rule

from .conftest import T0, add_minutes, add_rule

M = timedelta(minutes=1)
H = timedelta(hours=1)


async def _replay_evaluator(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings, minutes: int
) -> list[tuple[object, object]]:
    """Run a cycle at every minute of [T0, T0 + minutes]; the alerts' (started, resolved)."""
    for k in range(minutes + 1):
        await run_cycle(pool, settings, now=T0 + k * M)
    rows = await db.fetch("SELECT started_at, resolved_at FROM analytics_alerts ORDER BY id")
    return [(r["started_at"], r["resolved_at"]) for r in rows]


async def test_backtest_finds_what_the_evaluator_fires(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    # Healthy SN traffic, two failure bursts (the second still going at the end), and noise in
    # another country that the scope leaves out.
    await add_minutes(db, T0 - 30 * M, 90, succeeded=10, failed=0)
    await add_minutes(db, T0 + 5 * M, 6, channel="card", succeeded=0, failed=10)
    await add_minutes(db, T0 + 40 * M, 20, channel="card", succeeded=0, failed=10)
    await add_minutes(db, T0 - 30 * M, 90, country="CI", succeeded=0, failed=50)
    await add_rule(
        db,
        "fail-sn",
        metric="failure_rate",
        comparison="gt",
        threshold=0.3,
        windowMinutes=10,
        scope={"country": "SN"},
        **{"for": "2m"},
    )
    expected = await _replay_evaluator(db, pool, settings, 60)
    assert len(expected) == 2 and expected[1][1] is None  # the test means something

    rule = await load_rule(db, "fail-sn")
    assert rule is not None
    bt = await backtest(db, rule, T0, T0 + 60 * M, reporting_currency="USD", now=T0 + 61 * M)
    assert [(f.fired_at, f.resolved_at) for f in bt.firings] == expected
    assert bt.evaluations == 61 and bt.minutes_from == T0
    first = bt.firings[0]
    # Pending from the first minute over 0.3 (50 failed of 150), fired 2 minutes on (60/160).
    assert first.pending_since == T0 + 10 * M and first.fired_at == T0 + 12 * M
    assert first.value == Decimal("0.375") and first.peak == Decimal("0.375")
    assert first.resolution == "minute"
    doc = bt.document()
    assert doc["firingsTotal"] == 2 and doc["firings"][1]["resolvedAt"] is None


async def test_backtest_of_counts_and_volumes_matches_the_evaluator(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    # A traffic stop (tx_count lt 1 over 5 minutes) and a volume spike in XOF, converted.
    await add_minutes(db, T0 - 10 * M, 20, succeeded=5, payment_volume="1000")
    await add_minutes(db, T0 + 20 * M, 10, succeeded=5, payment_volume="1000")
    await add_minutes(db, T0 + 24 * M, 2, channel="card", succeeded=5, payment_volume="1000000")
    await add_rule(db, "stop", metric="tx_count", comparison="lt", threshold=1, windowMinutes=5)
    await add_rule(
        db, "vol", metric="gross_volume", comparison="gte", threshold=1000, windowMinutes=3
    )
    for k in range(31):
        await run_cycle(pool, settings, now=T0 + k * M)
    for name in ("stop", "vol"):
        rows = await db.fetch(
            "SELECT started_at, resolved_at FROM analytics_alerts WHERE rule_name = $1 ORDER BY id",
            name,
        )
        rule = await load_rule(db, name)
        assert rule is not None and rows
        bt = await backtest(db, rule, T0, T0 + 30 * M, reporting_currency="USD", now=T0 + 40 * M)
        got = [(f.fired_at, f.resolved_at) for f in bt.firings]
        assert got == [(r["started_at"], r["resolved_at"]) for r in rows], name


async def test_backtest_reads_hours_before_the_minute_data(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    # Two days of hours (a failing hour in the first day), minutes for the last 2 hours only.
    start = T0 - 48 * H
    await add_minutes(db, start, 48, succeeded=100, failed=0, table="txn_hourly_agg", step=H)
    await db.execute(
        "UPDATE txn_hourly_agg SET failed_count = 100, tx_count = 200 WHERE hour = $1",
        start + 10 * H,
    )
    await add_minutes(db, T0 - 2 * H, 120, succeeded=10, failed=0)
    await add_minutes(db, T0 - 20 * M, 5, channel="card", succeeded=0, failed=10)
    await add_rule(
        db, "fail", metric="failure_rate", comparison="gt", threshold=0.2, windowMinutes=15
    )
    rule = await load_rule(db, "fail")
    assert rule is not None
    bt = await backtest(db, rule, start, T0, reporting_currency="USD", now=T0)
    # Minutes from the first instant whose whole window has minute data.
    assert bt.minutes_from == T0 - 2 * H + M + 15 * M
    hourly, minutely = bt.firings
    assert hourly.resolution == "hour" and hourly.fired_at == start + 11 * H
    assert hourly.resolved_at == start + 12 * H and hourly.value == Decimal("0.5")
    assert minutely.resolution == "minute" and minutely.fired_at == T0 - 20 * M + 4 * M
    # Hours at 12:00 (day 1) ... 10:00 (day 3), then every minute from 10:16 to 12:00.
    assert bt.evaluations == 47 + 105


async def test_backtest_refuses_empty_and_long_ranges(db: asyncpg.Connection) -> None:
    await add_rule(db, "r", metric="tx_count", comparison="gt", threshold=1, windowMinutes=5)
    rule = await load_rule(db, "r")
    assert rule is not None
    with pytest.raises(ValueError, match="after"):
        await backtest(db, rule, T0, T0, reporting_currency="USD", now=T0 + H)
    with pytest.raises(ValueError, match="31 days"):
        await backtest(db, rule, T0 - 40 * 24 * H, T0, reporting_currency="USD", now=T0)
