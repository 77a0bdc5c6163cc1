"""The API against a broker the test owns, stopped for 30 s and started again at the same
address: the API answers as before (it needs no broker to answer), ``/health`` says Kafka is
down (503, which takes the pod out of the Service, never restarts it), the wait is logged once
per interval and shown in ``analytics_waiting_for``, and ``/health`` is ok again by itself once
the broker is back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from helpers.broker import OwnedBroker, owned_broker
from prometheus_client import REGISTRY

from molam_workloads.core.faults import LOG_EVERY_SECONDS

from .conftest import api_settings, running_api

DOWN_SECONDS = 30
WAITING = {"component": "api", "service": "kafka"}


@pytest.fixture
async def broker() -> AsyncIterator[OwnedBroker]:
    async with owned_broker() as owned:
        yield owned


@pytest.mark.timeout(120)
async def test_the_api_answers_through_30s_without_the_broker(
    database_url: str, redis_url: str, broker: OwnedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(database_url, redis_url, kafka_bootstrap_servers=broker.bootstrap)
    with caplog.at_level(logging.INFO, logger="molam_workloads"):
        async with running_api(settings) as api:
            health = await api.client.get("/health")
            assert health.status_code == 200, health.text

            await broker.down()
            down_at = time.monotonic()
            checks = 0
            while time.monotonic() - down_at < DOWN_SECONDS:
                # As a readiness probe asks (every 10 s in the chart; more often here).
                health = await api.client.get("/health")
                assert health.status_code == 503, health.text
                assert health.json()["checks"] == {
                    "postgresql": {"status": "up"},
                    "redis": {"status": "up"},
                    "kafka": {"status": "down"},
                }
                kpis = await api.get("/v1/kpis")
                assert kpis.status_code == 200, kpis.text
                checks += 1
                await asyncio.sleep(0.5)
            detail = (await api.get("/health")).json()["checks"]["kafka"]
            assert detail["status"] == "down" and detail["waiting_seconds"] >= DOWN_SECONDS - 2
            assert REGISTRY.get_sample_value("analytics_waiting_for", WAITING) == 1

            await broker.up()
            deadline = time.monotonic() + 10
            while (health := await api.client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, health.text
                await asyncio.sleep(0.2)
            assert health.json()["status"] == "ok"
            assert REGISTRY.get_sample_value("analytics_waiting_for", WAITING) == 0
            assert (await api.get("/v1/kpis")).status_code == 200
    waits = [
        m for r in caplog.records if (m := r.getMessage()).startswith("api: ") and "kafka" in m
    ]
    assert checks > 40
    # A line as the wait began, one per interval, one as it ended: not one per check.
    assert 2 <= len(waits) <= 2 + DOWN_SECONDS / LOG_EVERY_SECONDS + 1, waits
    assert "kafka is back after" in waits[-1]
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("molam_workloads")]
