"""The evaluator against real PostgreSQL: metric values, the state machine over cycles, one
alert and one notification per firing, resolution, and two evaluators at once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import asyncpg

from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.payload import verify
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.api.queries.alerts import transition
from molam_workloads.core.rules import delete_rule

from .conftest import SECRET, T0, MakeReceiver, add_minutes, add_rule

M = timedelta(minutes=1)


async def _values(db: asyncpg.Connection) -> dict[str, Decimal | None]:
    rows = await db.fetch(
        "SELECT r.name, s.last_value FROM analytics_alert_rules r "
        "JOIN analytics_alert_rule_state s ON s.rule_id = r.id"
    )
    return {r["name"]: r["last_value"] for r in rows}


async def test_metric_values_per_scope(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    start = T0 - 10 * M
    # M-1: SN/XOF mobile_money, 10 minutes of 8 ok + 2 failed, 8 payments of 1000 XOF, 1 refund.
    await add_minutes(db, start, 10, succeeded=8, failed=2, payment_volume="1000", refund_count=1)
    # M-1 in CI/XOF on card; M-2 in SN/EUR.
    await add_minutes(db, start, 10, country="CI", channel="card", succeeded=5, failed=5)
    await add_minutes(
        db, start, 10, merchant="M-2", currency="EUR", succeeded=4, payment_volume="100"
    )
    # Outside every window (too old) and in the future: ignored.
    await add_minutes(db, T0 - 200 * M, 5, succeeded=1000)
    await add_minutes(db, T0, 5, succeeded=1000)
    await db.execute(
        "INSERT INTO analytics_anomalies (anomaly_key, merchant_id, metric, bucket, value, "
        "baseline, zscore, direction, detected_at) VALUES "
        "('a1', 'M-1', 'tx_count', $1, 1, 1, 5, 'spike', $1), "
        "('a2', NULL, 'tx_count', $1, 1, 1, 5, 'spike', $1), "
        "('a3', 'M-1', 'volume', $2, 1, 1, 5, 'spike', $2)",
        T0 - 5 * M,
        T0 - 100 * M,
    )
    base = {"comparison": "gt", "threshold": 1e12, "windowMinutes": 15}
    m1 = {"merchantId": "M-1"}
    await add_rule(db, "tx-all", metric="tx_count", **base)
    await add_rule(db, "tx-m1", metric="tx_count", scope=m1, **base)
    await add_rule(
        db,
        "tx-m1-sn-mm",
        metric="tx_count",
        scope={**m1, "country": "SN", "currency": "XOF", "channel": "mobile_money"},
        **base,
    )
    await add_rule(db, "tx-card", metric="tx_count", scope={"channel": "card"}, **base)
    await add_rule(db, "tx-nobody", metric="tx_count", scope={"merchantId": "M-9"}, **base)
    await add_rule(db, "tx-5min", metric="tx_count", scope=m1, **{**base, "windowMinutes": 5})
    await add_rule(db, "succ-m1-sn", metric="success_rate", scope={**m1, "country": "SN"}, **base)
    await add_rule(db, "fail-m1", metric="failure_rate", scope=m1, **base)
    await add_rule(db, "fail-nobody", metric="failure_rate", scope={"merchantId": "M-9"}, **base)
    await add_rule(db, "refund-m1-sn", metric="refund_rate", scope={**m1, "country": "SN"}, **base)
    await add_rule(db, "vol-all", metric="gross_volume", **base)
    await add_rule(db, "ticket-m2", metric="avg_ticket", scope={"merchantId": "M-2"}, **base)
    await add_rule(db, "anom-all", metric="anomaly_count", **base)
    await add_rule(db, "anom-m1", metric="anomaly_count", scope=m1, **base)
    await add_rule(
        db, "anom-m1-long", metric="anomaly_count", scope=m1, **{**base, "windowMinutes": 180}
    )

    report = await run_cycle(pool, settings, now=T0)
    assert report.rules == 15 and report.fired == [] and report.no_data == 1
    v = await _values(db)
    assert v["tx-all"] == 100 + 100 + 40
    assert v["tx-m1"] == 200
    assert v["tx-m1-sn-mm"] == 100
    assert v["tx-card"] == 100
    assert v["tx-nobody"] == 0  # a count over no data is 0 ...
    assert v["fail-nobody"] is None  # ... a rate over no data is "no data"
    assert v["tx-5min"] == 100  # 5 of M-1's 10 minutes in each of its two scopes
    assert v["succ-m1-sn"] == Decimal("0.8")
    assert v["fail-m1"] == Decimal("0.35")  # (20 + 50) / 200
    assert v["refund-m1-sn"] == Decimal("0.125")  # 10 refunds / 80 payments
    # 10 x 1000 XOF x 0.00165 + 10 x 100 EUR x 1.08 (the seeded FX rates), in USD.
    assert v["vol-all"] == Decimal("16.5") + Decimal("1080")
    assert v["ticket-m2"] == Decimal("1080") / 40
    assert v["anom-all"] == 2 and v["anom-m1"] == 1 and v["anom-m1-long"] == 2


async def test_long_windows_read_hourly_aggregates(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    hour = timedelta(hours=1)
    await add_minutes(db, T0 - 72 * hour, 72, succeeded=3, table="txn_hourly_agg", step=hour)
    await add_minutes(db, T0 - 60 * M, 60, succeeded=1000)  # minute data is not read
    await add_rule(
        db, "tx-3d", metric="tx_count", comparison="gt", threshold=0, windowMinutes=3 * 24 * 60
    )
    await run_cycle(pool, settings, now=T0)
    assert (await _values(db))["tx-3d"] == 3 * 72


async def test_long_minute_windows_read_whole_hours_from_hourly(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    hour = timedelta(hours=1)
    # Different sums in the two tables show which one each part of the window reads.
    await add_minutes(db, T0 - 5 * hour, 6 * 60, succeeded=1)
    await add_minutes(db, T0 - 5 * hour, 6, succeeded=100, table="txn_hourly_agg", step=hour)
    await add_rule(db, "tx-4h", metric="tx_count", comparison="gt", threshold=0, windowMinutes=240)
    await add_rule(
        db,
        "tx-2h",
        metric="tx_count",
        comparison="gt",
        threshold=0,
        windowMinutes=120,
        scope={"merchantId": "M-1"},
    )
    await run_cycle(pool, settings, now=T0 + 30 * M)
    v = await _values(db)
    # 08:30-09:00 minutes + 09:00-12:00 hours + 12:00-12:30 minutes.
    assert v["tx-4h"] == 30 + 3 * 100 + 30
    assert v["tx-2h"] == 120  # shorter than ALERTS_HOURLY_SPLIT_MINUTES: minutes only


async def test_missing_fx_rate_is_no_data(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings
) -> None:
    await add_minutes(db, T0 - 5 * M, 5, currency="JPY", payment_volume="100")
    await add_rule(db, "vol", metric="gross_volume", comparison="gt", threshold=0, windowMinutes=10)
    report = await run_cycle(pool, settings, now=T0)
    assert report.no_data == 1 and report.fired == []


async def test_fires_once_respects_for_resolves_and_notifies(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    hook = await receiver()
    quiet = await receiver()
    await add_rule(
        db,
        "high-failure-sn",
        metric="failure_rate",
        comparison="gt",
        threshold=0.2,
        windowMinutes=15,
        **{"for": "5m"},
        severity="critical",
        scope={"country": "SN"},
        notify={"webhooks": [{"url": hook.url}, {"url": quiet.url, "sendResolved": False}]},
    )
    # 3 failed of 10 from T0-15m to T0+7m, then healthy traffic.
    await add_minutes(db, T0 - 15 * M, 22, succeeded=7, failed=3)
    await add_minutes(db, T0 + 7 * M, 30, succeeded=10, failed=0)
    notifier = Notifier(pool, settings)

    async def state() -> tuple[str, int]:
        st = await db.fetchval("SELECT state FROM analytics_alert_rule_state")
        return st, await db.fetchval("SELECT count(*) FROM analytics_alerts")

    r = await run_cycle(pool, settings, now=T0)
    assert (r.pending, r.firing) == (1, 0) and await state() == ("pending", 0)
    await run_cycle(pool, settings, now=T0 + 4 * M)
    assert await state() == ("pending", 0)
    r = await run_cycle(pool, settings, now=T0 + 5 * M)
    assert len(r.fired) == 1 and await state() == ("firing", 1)
    for minute in (6, 7, 8):  # still true (or in-window): no second alert, nothing queued
        r = await run_cycle(pool, settings, now=T0 + minute * M)
        assert r.fired == [] and r.notifications == 0
    assert await state() == ("firing", 1)
    assert await notifier.drain_once() == 2
    assert await notifier.drain_once() == 0  # delivered once, not again

    # Healthy minutes push the failure rate under 0.2: resolved at once.
    r = await run_cycle(pool, settings, now=T0 + 18 * M)
    assert len(r.resolved) == 1 and await state() == ("inactive", 1)
    assert await notifier.drain_once() == 1  # resolved: only the receiver with sendResolved
    await notifier.aclose()

    alert = await db.fetchrow("SELECT * FROM analytics_alerts")
    assert alert["state"] == "resolved" and alert["value"] > Decimal("0.2")
    assert alert["started_at"] == T0 + 5 * M and alert["resolved_at"] == T0 + 18 * M
    assert alert["notify_attempts"] == 3 and alert["notify_error"] is None
    assert alert["notified_at"] is not None
    events = [
        r["event"] for r in await db.fetch("SELECT event FROM analytics_alert_events ORDER BY id")
    ]
    assert events == ["fired", "notified", "notified", "resolved", "notified"]

    assert [m.json["status"] for m in hook.received] == ["firing", "resolved"]
    assert [m.json["status"] for m in quiet.received] == ["firing"]
    for m in hook.received + quiet.received:
        assert verify(SECRET.encode(), m.body, m.headers["x-molam-signature"])
        assert m.headers["content-type"] == "application/json"
    firing, resolved = hook.received[0].json, hook.received[1].json
    assert firing["version"] == "4" and firing["receiver"] == "molam-analytics"
    assert firing["groupKey"] == '{}:{alertname="high-failure-sn"}'
    assert firing["externalURL"] == "http://analytics.test:8082"
    a = firing["alerts"][0]
    assert a["labels"]["alertname"] == "high-failure-sn"
    assert a["labels"]["severity"] == "critical" and a["labels"]["country"] == "SN"
    assert a["labels"]["metric"] == "failure_rate" and "merchant_id" not in a["labels"]
    assert a["startsAt"] == "2026-03-02T12:05:00Z" and a["endsAt"] == "0001-01-01T00:00:00Z"
    assert a["annotations"]["summary"] == "failure_rate 0.3 > 0.2"
    assert a["generatorURL"] == f"http://analytics.test:8082/v1/alerts/{alert['id']}"
    b = resolved["alerts"][0]
    assert b["status"] == "resolved" and b["endsAt"] == "2026-03-02T12:18:00Z"
    assert b["fingerprint"] == a["fingerprint"] and b["labels"] == a["labels"]

    # A new breach later is a new firing: a second alert row.
    await add_minutes(db, T0 + 40 * M, 10, succeeded=0, failed=10)
    await run_cycle(pool, settings, now=T0 + 50 * M)
    r = await run_cycle(pool, settings, now=T0 + 55 * M)
    assert len(r.fired) == 1 and await state() == ("firing", 2)


async def test_an_alert_resolved_through_the_api_sends_its_resolved_webhook_once(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    hook = await receiver()
    quiet = await receiver()
    await add_rule(
        db,
        "failures",
        metric="failure_rate",
        comparison="gt",
        threshold=0.2,
        windowMinutes=15,
        notify={"webhooks": [{"url": hook.url}, {"url": quiet.url, "sendResolved": False}]},
    )
    await add_minutes(db, T0 - 15 * M, 30, succeeded=5, failed=5)
    notifier = Notifier(pool, settings)
    assert len((await run_cycle(pool, settings, now=T0)).fired) == 1
    assert await notifier.drain_once() == 2
    alert_id = await db.fetchval("SELECT id FROM analytics_alerts")

    await transition(db, alert_id, "resolved", "ops@example.com", "handled by hand")
    r = await run_cycle(pool, settings, now=T0 + M)  # the condition still holds: no new alert
    assert r.fired == [] and r.notifications == 1
    assert (await run_cycle(pool, settings, now=T0 + 2 * M)).notifications == 0  # once
    assert await notifier.drain_once() == 1
    await notifier.aclose()
    assert [m.json["status"] for m in hook.received] == ["firing", "resolved"]
    assert [m.json["status"] for m in quiet.received] == ["firing"]
    assert await db.fetchval("SELECT count(*) FROM analytics_alerts") == 1


async def test_rule_disabled_or_deleted_while_firing_resolves(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    hook = await receiver()
    doc = {
        "metric": "tx_count",
        "comparison": "gt",
        "threshold": 0,
        "windowMinutes": 5,
        "notify": {"webhooks": [{"url": hook.url}]},
    }
    await add_rule(db, "a", **doc)
    await add_rule(db, "b", **doc)
    await add_minutes(db, T0 - 5 * M, 5)
    r = await run_cycle(pool, settings, now=T0)
    assert len(r.fired) == 2
    await add_rule(db, "a", **{**doc, "enabled": False})
    assert await delete_rule(db, "b")
    r = await run_cycle(pool, settings, now=T0 + M)
    assert r.rules == 0 and len(r.resolved) == 2
    assert await db.fetchval("SELECT count(*) FROM analytics_alerts WHERE state = 'resolved'") == 2
    assert (
        await db.fetchval(
            "SELECT state FROM analytics_alert_rule_state s JOIN analytics_alert_rules r "
            "ON r.id = s.rule_id WHERE r.name = 'a'"
        )
        == "inactive"
    )
    reasons = sorted(
        r["detail"]
        for r in await db.fetch(
            "SELECT detail->>'reason' AS detail FROM analytics_alert_events "
            "WHERE event = 'resolved'"
        )
    )
    assert reasons == ["rule deleted", "rule disabled"]
    notifier = Notifier(pool, settings)
    assert await notifier.drain_once() == 4  # deleted rule's webhook kept on its alert
    await notifier.aclose()
    assert sorted(m.json["status"] for m in hook.received) == ["firing"] * 2 + ["resolved"] * 2


async def test_two_evaluators_at_once_fire_and_notify_once(
    db: asyncpg.Connection,
    database_url: str,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    hook = await receiver(delay=0.2)
    for i in range(50):
        await add_rule(
            db,
            f"r{i}",
            metric="tx_count",
            comparison="gt",
            threshold=i,
            windowMinutes=5,
            notify={"webhooks": [{"url": hook.url}]},
        )
    await add_minutes(db, T0 - 5 * M, 10, succeeded=5)  # tx_count 25: rules r0..r24 fire
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=4) for _ in range(2)]
    notifiers = [Notifier(p, settings) for p in pools]
    try:
        for k in range(3):  # three rounds, each with both evaluators at the same instant
            await asyncio.gather(
                *(run_cycle(p, settings, now=T0 + k * M) for p in pools),
                *(n.drain_once() for n in notifiers),
            )
        await asyncio.gather(*(n.drain_once() for n in notifiers))
    finally:
        for n in notifiers:
            await n.aclose()
        for p in pools:
            await p.close()
    assert await db.fetchval("SELECT count(*) FROM analytics_alerts") == 25
    assert (
        await db.fetchval("SELECT count(*) FROM analytics_alert_events WHERE event = 'fired'") == 25
    )
    names = [m.json["groupLabels"]["alertname"] for m in hook.received]
    assert len(names) == 25 and len(set(names)) == 25
