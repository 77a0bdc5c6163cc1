"""/health reports each dependency; /metrics exposes the runbook's names; errors keep shape."""

from __future__ import annotations

import logging

import pytest
from helpers.kafka_tls import TlsBroker, TlsFiles

from .conftest import Api, api_settings, auth, running_api
from .test_cache import closed_port


async def test_health_all_up(module_api: Api) -> None:
    r = await module_api.client.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert {k: v["status"] for k, v in body["checks"].items()} == {
        "postgresql": "up",
        "redis": "up",
        "kafka": "up",
    }


@pytest.mark.parametrize("down", ["redis", "kafka"])
async def test_health_with_a_service_down(
    module_db: str, module_redis_url: str, down: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a token: statuses only (the error names hosts); the error is in the log, and in
    the answer for an ops token only."""
    port = closed_port()
    redis_url = (
        f"redis://:hunter2-secret@127.0.0.1:{port}/0" if down == "redis" else module_redis_url
    )
    overrides = {"kafka_bootstrap_servers": f"127.0.0.1:{port}"} if down == "kafka" else {}
    settings = api_settings(module_db, redis_url, **overrides)
    async with running_api(settings) as api:
        with caplog.at_level(logging.WARNING, logger="molam_workloads.api"):
            r = await api.client.get("/health")
        ops = await api.client.get("/health", headers=auth("ops"))
        analyst = await api.client.get("/health", headers=auth("analyst"))
        forged = await api.client.get("/health", headers=auth("ops", secret="x" * 40))
    assert r.status_code == 503, r.text
    checks = r.json()["checks"]
    assert checks == {k: {"status": "down" if k == down else "up"} for k in checks}
    assert r.json()["status"] == "degraded"
    logged = [
        rec.getMessage()
        for rec in caplog.records
        if f"api: waiting for {down} (health check)" in rec.getMessage()
    ]
    assert logged and all("hunter2" not in m for m in caplog.messages)
    assert ops.status_code == 503 and ops.json()["checks"][down]["error"]
    assert ops.json()["checks"][down]["waiting_seconds"] >= 0
    assert ops.json()["checks"][down]["error"] in logged[0]
    for answer in (analyst, forged):
        assert answer.status_code == 503
        assert answer.json()["checks"][down] == {"status": "down"}


@pytest.mark.parametrize("down", ["redis", "kafka"])
async def test_ready_needs_postgresql_alone(
    module_db: str, module_redis_url: str, down: str
) -> None:
    """The readiness probe's answer: Redis or Kafka away leaves the pod in its Service
    (PostgreSQL away makes it 503: tests/workloads/api/test_postgres_faults.py)."""
    port = closed_port()
    redis_url = f"redis://127.0.0.1:{port}/0" if down == "redis" else module_redis_url
    overrides = {"kafka_bootstrap_servers": f"127.0.0.1:{port}"} if down == "kafka" else {}
    settings = api_settings(module_db, redis_url, **overrides)
    async with running_api(settings) as api:
        r = await api.client.get("/ready")
        health = await api.client.get("/health")
    assert health.status_code == 503
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"postgresql": {"status": "up"}}}


@pytest.mark.parametrize("right_ca", [True, False])
async def test_health_checks_kafka_over_tls(
    module_db: str, module_redis_url: str, tls_kafka: TlsBroker, tls_files: TlsFiles,
    right_ca: bool,
) -> None:  # fmt: skip
    # A broker reachable only through TLS: a plain TCP connect would say "up" either way.
    settings = api_settings(
        module_db, module_redis_url, kafka_bootstrap_servers=tls_kafka.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(tls_files.ca if right_ca else tls_files.other_ca),
        kafka_ssl_cert_file=str(tls_files.client_cert),
        kafka_ssl_key_file=str(tls_files.client_key),
    )  # fmt: skip
    async with running_api(settings) as api:
        r = await api.client.get("/health", headers=auth("admin"))
    kafka = r.json()["checks"]["kafka"]
    if right_ca:
        assert r.status_code == 200 and kafka["status"] == "up", r.text
        assert tls_kafka.proxy.handshakes >= 1
    else:
        assert r.status_code == 503 and kafka["status"] == "down", r.text
        assert "CERTIFICATE_VERIFY_FAILED" in kafka["error"]


async def test_metrics(module_api: Api) -> None:
    await module_api.client.get("/v1/alerts/12345", headers=auth("admin"))
    await module_api.client.get("/no/such/page")
    text = (await module_api.client.get("/metrics")).text
    assert (
        'analytics_api_requests_total{method="GET",route="/v1/alerts/{alert_id}",status="404"}'
        in text
    )
    assert 'route="<unmatched>",status="404"' in text
    assert "analytics_api_request_duration_seconds_bucket" in text
    for name in (
        "analytics_cache_hits_total",
        "analytics_cache_misses_total",
        "analytics_ingest_events_total",
        "analytics_ingest_errors_total",
    ):
        assert name in text, name


async def test_error_shape(module_api: Api) -> None:
    r = await module_api.client.get("/no/such/page")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"code", "message", "details"}
    r = await module_api.client.get("/v1/alerts/abc", headers=auth("admin"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["details"][0]["loc"] == ["path", "alert_id"]
    r = await module_api.client.delete("/v1/kpis", headers=auth("admin"))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_docs_and_openapi(module_api: Api) -> None:
    docs = await module_api.client.get("/docs")
    assert docs.status_code == 200 and "/static/vendor/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    bundle = await module_api.client.get("/static/vendor/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    schema = (await module_api.client.get("/openapi.json")).json()
    assert "/v1/kpis" in schema["paths"]
    assert schema["paths"]["/v1/kpis"]["get"]["security"] == [{"bearer": []}]
