"""Webhook delivery: retries with backoff, failures visible on the alert and counted, and a
slow or dead receiver never holding back another rule's webhook."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
from prometheus_client import REGISTRY

from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.settings import AlertsSettings

from .conftest import T0, MakeReceiver, add_minutes, add_rule, closed_port_url, wait_for

M = timedelta(minutes=1)


def _failures(kind: str) -> float:
    return REGISTRY.get_sample_value("analytics_alert_rule_failures_total", {"kind": kind}) or 0.0


async def _fire(
    db: asyncpg.Connection, pool: asyncpg.Pool, settings: AlertsSettings, **hooks: str
) -> None:
    for name, url in hooks.items():
        await add_rule(
            db,
            name,
            metric="tx_count",
            comparison="gt",
            threshold=0,
            windowMinutes=5,
            notify={"webhooks": [{"url": url}]},
        )
    await add_minutes(db, T0 - 5 * M, 5)
    r = await run_cycle(pool, settings, now=T0)
    assert len(r.fired) == len(hooks)


async def _alert(db: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM analytics_alerts WHERE rule_name = $1", name)
    assert row is not None
    return row


async def test_failing_webhook_is_retried_with_backoff_until_delivered(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    flaky = await receiver(statuses=[500, 503])
    await _fire(db, pool, settings, flaky=flaky.url)
    before = _failures("webhook")
    task = asyncio.create_task(Notifier(pool, settings).run())
    try:
        await wait_for(lambda: _delivered(db))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(flaky.received) == 3
    gaps = [b.at - a.at for a, b in zip(flaky.received, flaky.received[1:], strict=False)]
    # base 0.1 s doubling, jitter between half and full delay: >= 0.05 s, then >= 0.1 s.
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1
    # The same delivery id on every attempt, so receivers can deduplicate.
    assert len({m.headers["x-molam-delivery"] for m in flaky.received}) == 1
    alert = await _alert(db, "flaky")
    assert alert["notify_attempts"] == 3 and alert["notified_at"] is not None
    assert alert["notify_error"] is None  # cleared by the success
    assert _failures("webhook") - before == 2


async def _delivered(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT bool_and(delivered_at IS NOT NULL) FROM analytics_alert_notifications"
        )
    )


async def test_dead_webhook_gives_up_visibly_and_never_blocks_others(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    settings = settings.model_copy(update={"alerts_webhook_timeout_seconds": 0.5})
    slow = await receiver(delay=5.0)  # answers long after the 0.5 s timeout
    fast = await receiver()
    dead = closed_port_url()
    await _fire(db, pool, settings, slow=slow.url, dead=dead, fast=fast.url)
    gave_up = _failures("webhook_gave_up")
    started = time.monotonic()
    task = asyncio.create_task(Notifier(pool, settings).run())
    try:
        await wait_for(lambda: _count(fast), timeout=5)
        fast_after = time.monotonic() - started
        await wait_for(lambda: _all_settled(db), timeout=15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert fast_after < 0.4  # not queued behind the slow one's 0.5 s timeouts
    assert len(fast.received) == 1 and len(slow.received) == 4  # max attempts
    for name, error in (("slow", "timeout after 0.5s"), ("dead", "ConnectError")):
        alert = await _alert(db, name)
        assert alert["notify_attempts"] == 4 and alert["notified_at"] is None
        # The host only: a webhook's path and query often carry a token.
        assert alert["notify_error"].startswith("127.0.0.1:")
        assert "/hook" not in alert["notify_error"]
        assert error in alert["notify_error"]
        events = await db.fetch(
            "SELECT event, detail->>'attempts' AS n FROM analytics_alert_events "
            "WHERE alert_id = $1 ORDER BY id",
            alert["id"],
        )
        assert [(e["event"], e["n"]) for e in events] == [("fired", None), ("notify_failed", "4")]
    assert _failures("webhook_gave_up") - gave_up == 2
    assert (await _alert(db, "fast"))["notify_error"] is None


async def _count(r: object) -> bool:
    return bool(r.received)


async def _all_settled(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT bool_and(delivered_at IS NOT NULL OR failed_at IS NOT NULL) "
            "FROM analytics_alert_notifications"
        )
    )
