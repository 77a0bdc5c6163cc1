"""The API against a PostgreSQL cluster the test owns: restarted, then down for 60 s. Requests
get a 503 (never a 500) while it is away, ``/health`` says which service is down (statuses only
without a token, how long it has waited for an ops token), ``analytics_waiting_for`` shows the
wait, the log reports it once per interval, and the API answers again by itself after."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from helpers.services import OwnedPostgres, owned_postgres
from prometheus_client import REGISTRY

from molam_workloads.core.db import migrate
from molam_workloads.core.faults import BACKOFF_CAP, LOG_EVERY_SECONDS

from .conftest import Api, api_settings, auth, running_api

DOWN_SECONDS = 60
WAITING = {"component": "api", "service": "postgresql"}


@pytest.fixture
async def pg() -> AsyncIterator[OwnedPostgres]:
    async with owned_postgres() as server:
        await migrate(server.dsn)
        yield server


def _waiting() -> float | None:
    return REGISTRY.get_sample_value("analytics_waiting_for", WAITING)


async def _until(api: Api, path: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = await api.get(path)
        assert r.status_code in (200, 503), r.text  # never a 500
        if r.status_code == status:
            return
        assert time.monotonic() < deadline, f"{path} still {r.status_code}: {r.text}"
        await asyncio.sleep(0.2)


async def test_the_api_rides_through_a_restart_and_60s_down(
    pg: OwnedPostgres, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(pg.dsn, redis_url, cache_ttl_seconds=0)
    with caplog.at_level(logging.INFO, logger="molam_workloads"):
        async with running_api(settings) as api:
            assert (await api.get("/v1/kpis")).status_code == 200

            await pg.restart()
            await _until(api, "/v1/kpis", 200, 10)

            await pg.stop()
            down_at = time.monotonic()
            answers = []
            while time.monotonic() - down_at < DOWN_SECONDS:
                r = await api.get("/v1/kpis")
                answers.append(r.status_code)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                await asyncio.sleep(0.25)
            assert _waiting() == 1
            anonymous = await api.client.get("/health")
            assert anonymous.status_code == 503
            assert anonymous.json()["checks"]["postgresql"] == {"status": "down"}
            not_ready = await api.client.get("/ready")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"] == {"postgresql": {"status": "down"}}
            ops = (await api.client.get("/health", headers=auth("ops"))).json()
            assert ops["checks"]["postgresql"]["waiting_seconds"] >= DOWN_SECONDS - 1
            assert ops["checks"]["redis"]["status"] == "up"

            await pg.start()
            # Nothing asks /health here: the API's own probe notices PostgreSQL's return.
            deadline = time.monotonic() + BACKOFF_CAP + 5
            while _waiting() != 0:
                assert time.monotonic() < deadline, "the wait did not end"
                await asyncio.sleep(0.2)
            await _until(api, "/v1/kpis", 200, 5)
            assert (await api.client.get("/health")).status_code == 200
            assert (await api.client.get("/ready")).status_code == 200
    waits = [
        m for r in caplog.records if (m := r.getMessage()).startswith("api: ") and "postgresql" in m
    ]
    # A line as the wait began, one per interval, one as it ended: not one per request.
    assert len(answers) > 100
    assert 2 <= len(waits) <= 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1, waits
    assert "waiting for postgresql (GET /v1/kpis, request " in waits[0]
    assert "postgresql is back after" in waits[-1]
    # asyncpg's own reconnection lines carry a traceback, which the command line's logging cuts
    # to one line (cli._OneLineRetries; test_cli checks it); none of the API's own lines does.
    ours = [r for r in caplog.records if r.exc_info and r.name.startswith("molam_workloads")]
    assert not ours, "a traceback was logged"
