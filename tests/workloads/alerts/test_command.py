"""``molam-analytics alerts --once`` as processes: two at the same time notify once."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from molam_workloads.alerts.payload import verify

from .conftest import SECRET, MakeReceiver, add_minutes, add_rule

CLI = str(Path(sys.executable).with_name("molam-analytics"))


async def _once(database_url: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ALERT_WEBHOOK_SECRET": SECRET,
        "PYTHONSAFEPATH": "1",
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


async def test_bad_configuration_is_one_line(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": "mysql://nope", "PYTHONSAFEPATH": "1"}
    proc = await asyncio.create_subprocess_exec(
        CLI, "alerts", "--once", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "molam-analytics alerts: error: bad configuration: DATABASE_URL: "
        "Value error, must start with postgresql:// (e.g. postgresql://user@host:5432/db)"
    ]
