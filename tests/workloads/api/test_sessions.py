"""The API's pool sends no reset when a request returns its connection (``app.lifespan``:
``create_pool(..., reset_sessions=False)``). That is sound only while no request leaves session
state behind: these tests run every kind of request over one pooled connection and look at
that session afterwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from helpers.samples import ALERT_RULE, sample_spec

from .conftest import api_settings, auth, running_api
from .seed import hourly, insert_alert, insert_hourly

# What a request could leave in its session: advisory locks held, channels listened to,
# cursors declared, settings changed by SET (``source = 'session'``; the pool's own settings
# come with the connection, as ``client``); and an open transaction.
SESSION_STATE = """
SELECT (SELECT count(*) FROM pg_locks
        WHERE pid = pg_backend_pid() AND locktype = 'advisory') AS advisory_locks,
       (SELECT count(*) FROM pg_listening_channels()) AS listening,
       (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,
       (SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM pg_settings
        WHERE source = 'session') AS set_in_session
"""
CLEAN = {
    "advisory_locks": 0,
    "listening": 0,
    "cursors": 0,
    "set_in_session": [],
}


async def test_requests_leave_no_session_state(database_url: str, redis_url: str) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    db = await asyncpg.connect(database_url)
    try:
        await insert_hourly(db, [hourly(hour, "M1", tx_count=3, succeeded_count=3)])
        alert_id = await insert_alert(db, "sn-fail", None)
    finally:
        await db.close()
    rng = {
        "from": (hour - timedelta(days=2)).isoformat(),
        "to": (hour + timedelta(hours=2)).isoformat(),
    }
    # One connection: every request below runs on the session that is inspected at the end.
    settings = api_settings(database_url, redis_url, db_pool_max=1, cache_ttl_seconds=0)
    async with running_api(settings) as api:
        ops = auth("ops")
        for path, params in (
            ("/v1/kpis", rng),
            ("/v1/breakdowns/country", rng),
            ("/v1/breakdowns/merchant", rng),
            ("/v1/timeseries", {**rng, "granularity": "hour"}),
            ("/v1/top-merchants", rng),
        ):
            r = await api.client.get(path, params=params, headers=ops)
            assert r.status_code == 200, (path, r.text)
        for path in (
            "/v1/alerts",
            f"/v1/alerts/{alert_id}",
            f"/v1/alerts/{alert_id}/notifications",
            "/v1/anomalies",
            "/v1/live",
            "/metrics",
            "/ready",
        ):
            r = await api.client.get(path, headers=ops)
            assert r.status_code == 200, (path, r.text)
        spec = sample_spec(ALERT_RULE)
        writes = (
            ("POST", "/v1/alert-rules", {"name": "sessions", "spec": spec}, 201),
            ("PUT", "/v1/alert-rules/sessions", {**spec, "threshold": 0.3}, 200),
            ("POST", "/v1/alert-rules/sessions/backtest", {}, 200),
            ("POST", f"/v1/alerts/{alert_id}/acknowledge", {}, 200),
            ("DELETE", "/v1/alert-rules/sessions", None, 204),
        )
        for method, path, body, status in writes:
            r = await api.client.request(method, path, json=body, headers=ops)
            assert r.status_code == status, (method, path, r.text)
        # A request that fails inside its transaction, holding a lock (deleting the rule
        # again: 404) leaves neither open.
        r = await api.client.delete("/v1/alert-rules/sessions", headers=ops)
        assert r.status_code == 404, r.text

        pool = api.app.state.resources.pool
        async with pool.acquire() as conn:
            in_transaction = conn.is_in_transaction()
            state = dict(await conn.fetchrow(SESSION_STATE))
    assert not in_transaction
    assert state == CLEAN


async def test_a_returned_connection_keeps_its_session(database_url: str, redis_url: str) -> None:
    """The reset round trip is gone: what a session holds survives its release (which is why
    the test above must hold)."""
    settings = api_settings(database_url, redis_url, db_pool_max=1)
    async with running_api(settings) as api:
        pool = api.app.state.resources.pool
        async with pool.acquire() as conn:
            await conn.execute("SELECT set_config('application_name', 'kept', false)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "kept"
            # ...but an open transaction is always rolled back on release (asyncpg's own).
            await conn.execute("BEGIN")
            await conn.execute("SELECT set_config('application_name', 'in a transaction', true)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW application_name") == "kept"
