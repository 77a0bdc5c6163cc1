"""The operator against a pipeline database the test owns (a PostgreSQL cluster of its own):
restarted, then down for 60 s. The operator stays up, the rule's Synced condition and
``analytics_waiting_for`` say what it waits for, its log reports the wait once per interval
rather than once per retry and per rule, and an edit made during the outage reaches the database
by itself, within the capped backoff, once PostgreSQL is back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from helpers.kube import apply, condition, eventually, kubectl, pipeline_with_db, sample
from helpers.services import OwnedPostgres, owned_postgres
from prometheus_client import REGISTRY

from molam_operator.main import waiting_for
from molam_workloads.core.db import migrate
from molam_workloads.core.faults import BACKOFF_CAP, LOG_EVERY_SECONDS

pytestmark = pytest.mark.kube

DOWN_SECONDS = 60
RULE = "high-failure-rate-sn"


@pytest.fixture
async def pg() -> AsyncIterator[OwnedPostgres]:
    async with owned_postgres() as server:
        await migrate(server.dsn)
        yield server


async def _threshold(dsn: str, name: str) -> str | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        value = await conn.fetchval(
            "SELECT threshold::text FROM analytics_alert_rules WHERE name = $1", name
        )
    finally:
        await conn.close()
    return None if value is None else str(value)


def _synced(namespace: str) -> dict[str, Any]:
    return condition(namespace, "alertrule", RULE, "Synced")


async def test_the_operator_rides_through_a_restart_and_60s_down(
    pg: OwnedPostgres, operator: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = f"postgresql {namespace}/pipeline/analytics"
    labels = {"component": "operator", "service": service}
    name = f"{namespace}/{RULE}"
    caplog.set_level(logging.INFO)
    apply(pipeline_with_db(namespace, pg.dsn))
    apply(sample("alertrule.yaml", namespace))
    await eventually("synced", lambda: _threshold(pg.dsn, name), timeout=20)

    await pg.restart()
    kubectl("patch", "alertrule", RULE, "-n", namespace, "--type=merge",
            "-p", '{"spec": {"threshold": 0.3}}')  # fmt: skip
    await eventually("edit after a restart", lambda: _is(pg.dsn, name, "0.3"), timeout=20)

    await pg.stop()
    down_at = time.monotonic()
    kubectl("patch", "alertrule", RULE, "-n", namespace, "--type=merge",
            "-p", '{"spec": {"threshold": 0.35}}')  # fmt: skip
    await eventually(
        "DatabaseUnavailable", lambda: _synced(namespace).get("reason") == "DatabaseUnavailable"
    )
    await eventually("waiting", lambda: _database_waits() == [service], timeout=20)
    assert REGISTRY.get_sample_value("analytics_waiting_for", labels) == 1
    while time.monotonic() - down_at < DOWN_SECONDS:
        assert operator._thread.is_alive()  # the operator goes on (Kopf's runner thread)
        await asyncio.sleep(1)

    await pg.start()
    await eventually(
        "edit made while down", lambda: _is(pg.dsn, name, "0.35"), timeout=BACKOFF_CAP + 10
    )
    await eventually("Synced", lambda: _synced(namespace).get("status") == "True", timeout=15)
    assert _database_waits() == []
    assert REGISTRY.get_sample_value("analytics_waiting_for", labels) == 0
    waits = [m for r in caplog.records if (m := r.getMessage()).startswith(f"operator: {service}")
             or m.startswith(f"operator: waiting for {service}")
             or m.startswith(f"operator: still waiting for {service}")]  # fmt: skip
    # A line as each wait began, one per interval, one as each ended; not one per retry.
    assert 2 <= len(waits) <= 2 * 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1, waits
    assert any(f"{service} is back after" in m for m in waits), waits


def _database_waits() -> list[str]:
    # The pipeline's broker (127.0.0.1:1) is unreachable on purpose: its wait is not under test.
    return [w for w in waiting_for() if w.startswith("postgresql ")]


async def _is(dsn: str, name: str, value: str) -> bool:
    return await _threshold(dsn, name) == value
