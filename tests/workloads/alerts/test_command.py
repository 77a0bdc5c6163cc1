"""``molam-analytics alerts --once`` as processes: two at the same time notify once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from molam_workloads.alerts.payload import verify

from .alertmanager_server import alertmanager
from .conftest import (
    SECRET,
    MakeReceiver,
    Receiver,
    add_minutes,
    add_rule,
    closed_port_url,
    wait_for,
)

CLI = str(Path(sys.executable).with_name("molam-analytics"))


async def _once(database_url: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ALERT_WEBHOOK_SECRET": SECRET,
        "ALERT_WEBHOOK_ALLOW": "127.0.0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "alerts",
        "--once",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_two_once_processes_at_once_notify_once(
    db: asyncpg.Connection, database_url: str, receiver: MakeReceiver
) -> None:
    hook = await receiver()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await add_minutes(db, now - timedelta(minutes=10), 12, succeeded=2, failed=8)
    for i in range(20):
        await add_rule(
            db,
            f"fail-{i}",
            metric="failure_rate",
            comparison="gt",
            threshold=0.5,
            windowMinutes=10,
            notify={"webhooks": [{"url": hook.url}]},
        )
    results = await asyncio.gather(_once(database_url), _once(database_url))
    assert all(code == 0 for code, _ in results), results
    assert await db.fetchval("SELECT count(*) FROM analytics_alerts") == 20
    code, out = await _once(database_url)  # a third run later: still firing, nothing new
    assert code == 0 and "0 fired" in out, out
    assert len(hook.received) == 20
    assert len({m.json["groupLabels"]["alertname"] for m in hook.received}) == 20
    assert all(
        verify(SECRET.encode(), m.body, m.headers["x-molam-signature"]) for m in hook.received
    )


async def test_once_also_housekeeps(db: asyncpg.Connection, database_url: str) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await add_minutes(db, now - timedelta(hours=72), 30)  # beyond the 48 h retention
    await add_minutes(db, now - timedelta(minutes=30), 20)  # kept
    code, out = await _once(database_url)
    assert code == 0, out
    assert "housekeeping: 0 resolved alert(s) and 30 txn_minute_agg row(s) deleted" in out, out
    assert await db.fetchval("SELECT count(*) FROM txn_minute_agg") == 20


async def test_bad_configuration_is_one_line(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": "mysql://nope"}
    proc = await asyncio.create_subprocess_exec(
        CLI, "alerts", "--once", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "molam-analytics alerts: error: bad configuration: DATABASE_URL: "
        "Value error, must start with postgresql:// (e.g. postgresql://user@host:5432/db)"
    ]


async def test_loop_evaluates_notifies_serves_metrics_and_stops_on_sigterm(
    db: asyncpg.Connection, database_url: str, receiver: MakeReceiver
) -> None:
    hook = await receiver()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await add_minutes(db, now - timedelta(minutes=5), 7, succeeded=10)
    await add_rule(
        db,
        "traffic",
        metric="tx_count",
        comparison="gt",
        threshold=1,
        windowMinutes=5,
        notify={"webhooks": [{"url": hook.url}]},
    )
    port = int(closed_port_url().rsplit(":", 1)[1].split("/")[0])
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "METRICS_PORT": str(port),
        "ALERTS_NOTIFY_POLL_SECONDS": "0.1",
        "ALERT_WEBHOOK_ALLOW": "127.0.0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "alerts",
        "--interval",
        "0.5",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: _received(hook), timeout=15)
        metrics = await _scrape(port)
        assert "analytics_alert_evaluations_total" in metrics
        assert 'analytics_alerts_fired_total{severity="warning"} 1.0' in metrics
        assert 'analytics_alerts_firing{severity="warning"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    log = out.decode()
    assert proc.returncode == 0, log
    assert "alerts cycle: rules=1 firing=1" in log and "stopped cleanly" in log
    assert len(hook.received) == 1


async def _received(r: Receiver) -> bool:
    return bool(r.received)


async def _scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


async def test_the_loop_pushes_to_the_configured_alertmanager_and_keeps_it_active(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await add_minutes(db, now - timedelta(minutes=5), 7, succeeded=10)
    await add_rule(db, "traffic", metric="tx_count", comparison="gt", threshold=1, windowMinutes=5)
    async with alertmanager(tmp_path, resolve_timeout="2s") as am:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "METRICS_PORT": "0",
            # The Alertmanager's host is trusted by name, loopback or not.
            "ALERTMANAGER_URLS": am.url.replace("127.0.0.1", "localhost"),
            "ALERTMANAGER_RESEND_SECONDS": "0.5",
        }
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "alerts",
            "--interval",
            "0.5",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:

            async def pushed() -> bool:
                return len(await am.alerts(active="true")) == 1

            await wait_for(pushed, timeout=15)
            await asyncio.sleep(4)  # twice resolve_timeout: still active, being re-posted
            [alert] = await am.alerts(active="true")
            assert alert["labels"]["alertname"] == "traffic"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, out.decode()
    posts = await db.fetchval(
        "SELECT count(*) FROM analytics_alert_deliveries WHERE kind = 'alertmanager' AND ok"
    )
    assert posts >= 6


async def _cli(database_url: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_backtest_command_prints_the_firings(
    db: asyncpg.Connection, database_url: str
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    await add_minutes(db, now - timedelta(minutes=60), 50, succeeded=10)
    await add_rule(db, "stop", metric="tx_count", comparison="lt", threshold=1, windowMinutes=5)
    frm = (now - timedelta(minutes=30)).isoformat()
    code, out = await _cli(database_url, "alerts", "backtest", "stop", "--from", frm, "--json")
    assert code == 0, out
    doc = json.loads(out)
    # Traffic stopped 10 minutes ago: fired 5 minutes later, still firing.
    assert [(f["firedAt"], f["resolvedAt"]) for f in doc["firings"]] == [
        ((now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"), None)
    ]
    code, out = await _cli(database_url, "alerts", "backtest", "stop", "--from", frm)
    assert code == 0 and "1 firing(s)" in out and "still firing" in out, out
    code, out = await _cli(database_url, "alerts", "backtest", "nope")
    assert code == 2 and "no alert rule named 'nope'" in out
