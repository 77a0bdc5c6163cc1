"""Alerts pushed to a real Alertmanager 0.25 on loopback: labels and fingerprints as it sees
them, an amtool silence mutes them, resolution ends them, re-posting keeps them active past
resolve_timeout, and an Alertmanager that is down delays no other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from molam_workloads.alerts.alertmanager import AlertmanagerPusher
from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.payload import fingerprint
from molam_workloads.alerts.settings import AlertsSettings

from .alertmanager_server import Alertmanager, alertmanager
from .conftest import MakeReceiver, add_minutes, add_rule, closed_port_url, wait_for

M = timedelta(minutes=1)


@pytest.fixture
async def am(tmp_path: Path) -> AsyncIterator[Alertmanager]:
    async with alertmanager(tmp_path) as a:
        yield a


def _now() -> datetime:
    # Alertmanager compares startsAt/endsAt with its own clock: evaluate at the real time.
    return datetime.now(UTC)


async def _fire(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    alertmanagers: list[str],
    name: str = "tx-high",
) -> int:
    await add_rule(
        db,
        name,
        metric="tx_count",
        comparison="gt",
        threshold=0,
        windowMinutes=5,
        severity="critical",
        scope={"merchantId": "M-1", "country": "SN"},
        runbookUrl="https://runbooks.example/tx-high",
        notify={"alertmanagers": alertmanagers},
    )
    now = _now()
    await add_minutes(db, now - 5 * M, 5)
    report = await run_cycle(pool, settings, now=now)
    assert len(report.fired) == 1
    return report.fired[0]


async def _resolve(db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings) -> None:
    await db.execute("DELETE FROM txn_minute_agg")  # the condition clears now
    report = await run_cycle(pool, settings, now=_now())
    assert len(report.resolved) == 1


async def test_firing_alert_shows_with_prometheus_labels_and_the_same_fingerprint(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings, am: Alertmanager
) -> None:
    alert_id = await _fire(db, pool, settings, [am.url + "/"])
    pusher = AlertmanagerPusher(pool, settings)
    try:
        outcomes = await pusher.push_once()
    finally:
        await pusher.aclose()
    assert [o.ok for o in outcomes] == [True]
    [got] = await am.alerts()
    assert got["labels"] == {
        "alertname": "tx-high",
        "severity": "critical",
        "metric": "tx_count",
        "rule": "tx-high",
        "merchant_id": "M-1",
        "country": "SN",
    }
    assert got["annotations"]["summary"] == "tx_count 50 > 0"
    assert "threshold > 0" in got["annotations"]["description"]
    assert got["annotations"]["runbook_url"] == "https://runbooks.example/tx-high"
    assert got["generatorURL"] == "http://analytics.test:8082/v1/alert-rules/tx-high"
    assert got["status"]["state"] == "active"
    stored = await db.fetchrow(
        "SELECT labels, started_at FROM analytics_alerts WHERE id = $1", alert_id
    )
    assert stored is not None
    # Alertmanager's own fingerprint of the labels is the one our webhooks carry.
    assert got["fingerprint"] == fingerprint(got["labels"])
    started = datetime.fromisoformat(got["startsAt"].replace("Z", "+00:00"))
    assert abs((started - stored["started_at"]).total_seconds()) < 0.001
    ledger = await db.fetch(
        "SELECT kind, status, destination, attempt, status_code, ok, error "
        "FROM analytics_alert_deliveries WHERE alert_id = $1",
        alert_id,
    )
    host = am.url.removeprefix("http://")
    assert [dict(r) for r in ledger] == [
        {
            "kind": "alertmanager",
            "status": "firing",
            "destination": host,
            "attempt": 1,
            "status_code": 200,
            "ok": True,
            "error": None,
        }
    ]


@pytest.mark.parametrize(
    "labels",
    [
        {"alertname": "a"},
        {"alertname": "tx-high", "severity": "critical", "namespace": "payments"},
        {"alertname": "x", "merchant_id": "Ünïcødé-商户-42", "a": "1", "aa": "", "b_": "é"},
        {"alertname": "order", "Z": "upper first", "_": "underscore", "z9": "v=1,w=2"},
    ],
)
async def test_fingerprints_are_the_ones_alertmanager_computes(
    am: Alertmanager, labels: dict[str, str]
) -> None:
    ends = (_now() + timedelta(minutes=5)).isoformat()
    await am.post([{"labels": labels, "endsAt": ends}])
    got = await am.alerts()
    # Alertmanager drops empty label values before fingerprinting, as Prometheus does.
    kept = {k: v for k, v in labels.items() if v}
    [one] = [a for a in got if a["labels"] == kept]
    assert one["fingerprint"] == fingerprint(kept)


async def test_an_amtool_silence_mutes_the_alert(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings, am: Alertmanager
) -> None:
    await _fire(db, pool, settings, [am.url])
    pusher = AlertmanagerPusher(pool, settings)
    try:
        await pusher.push_once()
        silence_id = (
            await am.amtool(
                "silence",
                "add",
                "alertname=tx-high",
                "merchant_id=M-1",
                "--comment=maintenance",
                "--author=test",
                "--duration=1h",
            )
        ).strip()
        assert silence_id
        await pusher.push_once()  # a re-post does not undo the silence

        async def silenced() -> bool:
            [a] = await am.alerts()
            return bool(a["status"]["state"] == "suppressed")

        await wait_for(silenced, timeout=10)
        [a] = await am.alerts()
        assert a["status"]["silencedBy"] == [silence_id]
        assert await am.alerts(silenced="false") == []
    finally:
        await pusher.aclose()


async def test_a_resolved_alert_is_no_longer_active(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings, am: Alertmanager
) -> None:
    await _fire(db, pool, settings, [am.url])
    pusher = AlertmanagerPusher(pool, settings)
    try:
        await pusher.push_once()
        assert len(await am.alerts(active="true")) == 1
        await _resolve(db, pool, settings)
        outcomes = await pusher.push_once()
        assert [o.ok for o in outcomes] == [True]

        async def ended() -> bool:
            return await am.alerts(active="true") == []

        await wait_for(ended, timeout=10)
    finally:
        await pusher.aclose()
    statuses = await db.fetch(
        "SELECT status FROM analytics_alert_deliveries ORDER BY id",
    )
    assert [r["status"] for r in statuses] == ["firing", "resolved"]


async def test_a_firing_alert_stays_active_past_resolve_timeout(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    am: Alertmanager,
) -> None:
    # resolve_timeout is 5 s; endsAt is 4 x max(interval 1 s, resend 0.5 s) = 4 s ahead.
    settings = settings.model_copy(
        update={"alerts_interval_seconds": 1.0, "alertmanager_resend_seconds": 0.5}
    )
    await _fire(db, pool, settings, [am.url])
    pusher = AlertmanagerPusher(pool, settings)
    task = asyncio.create_task(pusher.run())
    try:
        started = time.monotonic()
        while time.monotonic() - started < 8:  # past resolve_timeout and past one endsAt
            await asyncio.sleep(1)
            assert len(await am.alerts(active="true")) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    posts = await db.fetchval("SELECT count(*) FROM analytics_alert_deliveries WHERE ok")
    assert posts >= 12  # every 0.5 s
    # Re-posting is what kept it: once it stops, the alert lapses at its last endsAt.

    async def lapsed() -> bool:
        return await am.alerts(active="true") == []

    await wait_for(lapsed, timeout=8)


async def test_each_alertmanager_is_posted_to_and_one_down_delays_no_other(
    tmp_path: Path,
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    settings = settings.model_copy(
        update={
            "alertmanager_timeout_seconds": 2.0,
            "alertmanager_max_attempts": 2,
            "alertmanager_resend_seconds": 10.0,
        }
    )
    slow = await receiver(delay=5.0)
    dead = closed_port_url().removesuffix("/hook")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with alertmanager(tmp_path / "a") as am1, alertmanager(tmp_path / "b") as am2:
        await _fire(db, pool, settings, [dead, f"http://127.0.0.1:{slow.port}", am1.url, am2.url])
        pusher = AlertmanagerPusher(pool, settings)
        try:
            started = time.monotonic()
            tasks = await pusher.start_round()
            assert len(tasks) == 4

            async def both_have_it() -> bool:
                return len(await am1.alerts()) == 1 and len(await am2.alerts()) == 1

            await wait_for(both_have_it, timeout=5)
            reached = time.monotonic() - started
            await asyncio.gather(*tasks)
        finally:
            await pusher.aclose()
    assert reached < 1.5  # not behind the slow one's 2 s timeouts nor the dead one's retries
    rows = await db.fetch(
        "SELECT destination, attempt, ok, error FROM analytics_alert_deliveries ORDER BY id"
    )
    by_host: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_host.setdefault(r["destination"], []).append(r)
    for good in (am1.url, am2.url):
        assert [(r["attempt"], r["ok"]) for r in by_host[good.removeprefix("http://")]] == [
            (1, True)
        ]
    dead_rows = by_host[dead.removeprefix("http://")]
    assert [r["attempt"] for r in dead_rows] == [1, 2]  # capped retries, then next round
    assert all("ConnectError" in r["error"] for r in dead_rows)
    slow_rows = by_host[f"127.0.0.1:{slow.port}"]
    assert [r["error"] for r in slow_rows] == ["timeout after 2s"] * 2


async def test_a_webhook_aimed_at_alertmanager_fails_with_its_reason_in_the_ledger(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings, am: Alertmanager
) -> None:
    # The mistake a new user makes: Alertmanager's API as a webhook (it wants a list).
    await add_rule(
        db,
        "misrouted",
        metric="tx_count",
        comparison="gt",
        threshold=0,
        windowMinutes=5,
        notify={"webhooks": [{"url": f"{am.url}/api/v2/alerts"}]},
    )
    now = _now()
    await add_minutes(db, now - 5 * M, 5)
    assert (await run_cycle(pool, settings, now=now)).fired
    notifier = Notifier(pool, settings)
    try:
        assert await notifier.drain_once() == 1
    finally:
        await notifier.aclose()
    error = await db.fetchval("SELECT error FROM analytics_alert_deliveries")
    assert error.startswith("HTTP 400: ") and len(error) > len("HTTP 400: ")
    assert "\n" not in error and len(error) <= len("HTTP 400: ") + 200
