"""ALERT_WEBHOOK_ALLOW: internal addresses refused by default after name resolution, at
connect time; allowed when the setting names them. Every listener is on loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import pytest
from helpers.loopback import loopback_only, refuse_beyond_loopback

from molam_workloads.alerts.alertmanager import AlertmanagerPusher
from molam_workloads.alerts.egress import EgressPolicy
from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.settings import AlertsSettings

from .conftest import T0, MakeReceiver, add_minutes, add_rule

M = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _nothing_leaves_loopback() -> Iterator[None]:
    """The addresses below are classified, never dialled: a connection anywhere but loopback
    fails the test before it is made."""
    with loopback_only():
        yield


@pytest.mark.parametrize(
    ("network", "why"),
    [
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("::ffff:127.0.0.0/104", "loopback"),
        ("169.254.0.0/16", "link-local"),  # cloud metadata
        ("10.0.0.0/8", "private"),  # a cluster's Service range
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("fd00::/8", "private"),
        ("100.64.0.0/10", "not globally routable"),
        ("0.0.0.0/32", "unspecified"),
    ],
)
def test_internal_addresses_are_refused_by_default(network: str, why: str) -> None:
    # Classified only: the range's first address is judged, never dialled (the delivery tests
    # use loopback listeners and assert the refusal).
    net = ipaddress.ip_network(network)
    address = net[0] if net.num_addresses == 1 else net[1]
    reason = EgressPolicy.parse(["public"]).refusal("hooks.example", address)
    assert reason is not None and why in reason


def test_public_addresses_pass_by_default_and_the_list_can_narrow_or_widen() -> None:
    public = ipaddress.ip_address("93.184.215.14")
    assert EgressPolicy.parse(["public"]).refusal("example.com", public) is None
    strict = EgressPolicy.parse(["hooks.example", "10.1.0.0/16"])
    assert strict.refusal("example.com", public) is not None  # 'public' not listed
    assert strict.refusal("HOOKS.example.", public) is None  # by name, case and dot aside
    assert strict.refusal("x", ipaddress.ip_address("10.1.2.3")) is None
    assert strict.refusal("x", ipaddress.ip_address("10.2.0.1")) is not None
    with pytest.raises(ValueError, match="neither"):
        EgressPolicy.parse(["http://x/"])


def test_the_setting_is_validated_and_alertmanager_urls_hosts_are_allowed() -> None:
    with pytest.raises(ValueError):
        AlertsSettings(alert_webhook_allow="not a host/")
    s = AlertsSettings(alertmanager_urls="http://am.monitoring:9093, http://am-1:9093/")
    assert s.alertmanagers == ["http://am.monitoring:9093", "http://am-1:9093"]
    assert s.egress_policy().hosts == {"am.monitoring", "am-1"}
    assert s.egress_policy().public


async def _fire(db: asyncpg.Connection, pool: asyncpg.Pool, s: AlertsSettings, url: str) -> None:
    await add_rule(
        db,
        "r",
        metric="tx_count",
        comparison="gt",
        threshold=0,
        windowMinutes=5,
        notify={"webhooks": [{"url": url}]},
    )
    await add_minutes(db, T0 - 5 * M, 5)
    assert (await run_cycle(pool, s, now=T0)).fired


async def _ledger(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await db.fetch("SELECT destination, ok, error FROM analytics_alert_deliveries ORDER BY id")
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_loopback_webhook_is_refused_by_default(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
    host: str,
) -> None:
    s = settings.model_copy(update={"alert_webhook_allow": "public"})
    hook = await receiver()
    await _fire(db, pool, s, f"http://{host}:{hook.port}/hook?token=abc")
    notifier = Notifier(pool, s)
    try:
        assert await notifier.drain_once() == 1
    finally:
        await notifier.aclose()
    assert hook.received == []  # never connected
    [row] = await _ledger(db)
    assert row["destination"] == f"{host}:{hook.port}" and not row["ok"]
    assert row["error"].startswith("refused: ")
    assert "is loopback, refused unless ALERT_WEBHOOK_ALLOW names it" in row["error"]
    assert "token" not in row["error"]
    # Retrying cannot change the policy: given up at once, visibly.
    alert = await db.fetchrow("SELECT notify_attempts, notify_error FROM analytics_alerts")
    assert alert is not None and alert["notify_attempts"] == 1
    assert "ALERT_WEBHOOK_ALLOW" in alert["notify_error"]


@pytest.mark.parametrize(
    ("host", "allow"),
    [("127.0.0.1", "127.0.0.0/8"), ("127.0.0.1", "public,127.0.0.1"), ("localhost", "localhost")],
)
async def test_a_loopback_webhook_is_delivered_when_allowed(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
    host: str,
    allow: str,
) -> None:
    s = settings.model_copy(update={"alert_webhook_allow": allow})
    hook = await receiver()
    await _fire(db, pool, s, f"http://{host}:{hook.port}/hook")
    notifier = Notifier(pool, s)
    try:
        assert await notifier.drain_once() == 1
    finally:
        await notifier.aclose()
    assert len(hook.received) == 1
    [row] = await _ledger(db)
    assert row["ok"] and row["error"] is None


async def test_a_rules_alertmanager_is_checked_but_the_configured_ones_are_trusted(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    settings: AlertsSettings,
    receiver: MakeReceiver,
) -> None:
    user_am = await receiver()
    configured_am = await receiver()
    s = settings.model_copy(
        update={
            "alert_webhook_allow": "public",
            "alertmanager_urls": f"http://localhost:{configured_am.port}",
        }
    )
    await add_rule(
        db,
        "r",
        metric="tx_count",
        comparison="gt",
        threshold=0,
        windowMinutes=5,
        notify={"alertmanagers": [f"http://127.0.0.1:{user_am.port}"]},
    )
    await add_minutes(db, T0 - 5 * M, 5)
    assert (await run_cycle(pool, s, now=T0)).fired
    pusher = AlertmanagerPusher(pool, s)
    try:
        outcomes = await pusher.push_once()
    finally:
        await pusher.aclose()
    assert sorted(o.ok for o in outcomes) == [False, True]
    assert [o.refused for o in outcomes if not o.ok] == [True]
    assert user_am.received == [] and len(configured_am.received) == 1
    refused = await db.fetch("SELECT attempt FROM analytics_alert_deliveries WHERE NOT ok")
    assert [r["attempt"] for r in refused] == [1]  # not retried
    assert configured_am.received[0].json[0]["labels"]["alertname"] == "r"


def test_the_guard_stops_a_connection_beyond_loopback_before_it_is_made() -> None:
    # The guard's check alone, on a documentation address (RFC 5737): no socket is opened.
    with pytest.raises(AssertionError, match="tests reach loopback only"):
        refuse_beyond_loopback(("192.0.2.1", 80))
    with pytest.raises(AssertionError):
        refuse_beyond_loopback(
            ("hooks.example", 443)
        )  # a name would be resolved first: refused too
    refuse_beyond_loopback(("127.0.0.1", 80))
    refuse_beyond_loopback(("::1", 80, 0, 0))
