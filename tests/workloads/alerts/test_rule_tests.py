"""Test notifications asked for through the API (a row of analytics_alert_tests), and webhooks
signed with their own secret."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg

from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.payload import verify
from molam_workloads.alerts.settings import AlertsSettings

from .conftest import SECRET, T0, MakeReceiver, add_minutes, add_rule, closed_port_url

M = timedelta(minutes=1)
OWN = "per-webhook-secret-0123456789"


async def test_a_test_request_reaches_every_destination_once_and_reports_each(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    own, shared, am = await receiver(), await receiver(), await receiver()
    failing = await receiver(statuses=[503])
    await add_rule(
        db,
        "r",
        metric="tx_count",
        comparison="lt",
        threshold=1,
        windowMinutes=5,
        notify={
            "webhooks": [
                {"url": own.url, "secret": OWN},
                {"url": shared.url},
                {"url": failing.url},
                {"url": closed_port_url()},
            ],
            "alertmanagers": [f"http://127.0.0.1:{am.port}"],
        },
    )
    test_id = await db.fetchval(
        "INSERT INTO analytics_alert_tests (rule_name, requested_by) VALUES ('r', 'ops-1') "
        "RETURNING id"
    )
    notifier = Notifier(pool, settings)
    try:
        assert await notifier.run_tests() == 1
        assert await notifier.run_tests() == 0  # answered once
    finally:
        await notifier.aclose()
    row = await db.fetchrow("SELECT done_at, results FROM analytics_alert_tests")
    assert row is not None and row["done_at"] is not None
    results = json.loads(row["results"])
    assert [(r["kind"], r["ok"], r["status_code"]) for r in results] == [
        ("webhook", True, 200),
        ("webhook", True, 200),
        ("webhook", False, 503),
        ("webhook", False, None),
        ("alertmanager", True, 200),
    ]
    assert results[3]["error"].startswith("ConnectError")
    assert all("/hook" not in r["destination"] for r in results)
    # Each webhook signed with its own secret, else the default one.
    [m_own], [m_shared] = own.received, shared.received
    assert verify(OWN.encode(), m_own.body, m_own.headers["x-molam-signature"])
    assert not verify(SECRET.encode(), m_own.body, m_own.headers["x-molam-signature"])
    assert verify(SECRET.encode(), m_shared.body, m_shared.headers["x-molam-signature"])
    assert m_own.json["alerts"][0]["labels"]["test"] == "true"
    assert m_own.headers["x-molam-delivery"] == f"test-{test_id}"
    [posted] = am.received[0].json
    assert posted["labels"]["alertname"] == "r" and posted["labels"]["test"] == "true"
    ledger = await db.fetch(
        "SELECT kind, status, attempt, ok FROM analytics_alert_deliveries WHERE test_id = $1 "
        "ORDER BY id",
        test_id,
    )
    assert [(r["kind"], r["status"], r["attempt"]) for r in ledger] == [
        ("webhook", "test", 1),
        ("webhook", "test", 1),
        ("webhook", "test", 1),
        ("webhook", "test", 1),
        ("alertmanager", "test", 1),
    ]


async def test_a_firing_webhook_is_signed_with_its_own_secret_which_the_api_never_shows(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    hook = await receiver()
    await add_rule(
        db,
        "r",
        metric="tx_count",
        comparison="gt",
        threshold=0,
        windowMinutes=5,
        notify={"webhooks": [{"url": hook.url, "secret": OWN}]},
    )
    spec = await db.fetchval("SELECT spec::text FROM analytics_alert_rules")
    assert OWN not in spec  # the document the API and the CR show: write-only
    await add_minutes(db, T0 - 5 * M, 5)
    assert (await run_cycle(pool, settings, now=T0)).fired
    notifier = Notifier(pool, settings)
    try:
        assert await notifier.drain_once() == 1
    finally:
        await notifier.aclose()
    [m] = hook.received
    assert verify(OWN.encode(), m.body, m.headers["x-molam-signature"])
    assert not verify(SECRET.encode(), m.body, m.headers["x-molam-signature"])
