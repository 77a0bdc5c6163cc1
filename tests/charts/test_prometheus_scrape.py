"""A real Prometheus scrapes the real processes, and every query of the chart's PrometheusRule
and of the Grafana dashboard answers with series.

The api, consumer, alerts evaluator and operator run as ``molam-analytics`` processes against
the stack, their metrics on loopback ports (METRICS_ADDRESS); some traffic moves their
counters (events, a bad record, cached and refused requests, a firing rule whose webhook
fails, a view refresh). Debian's Prometheus scrapes them every second with the labels the
PodMonitor's relabelling gives (namespace, pod) and evaluates the rendered rules.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from helpers.database import own_redis_url, scratch_database

from molam_workloads.core.events import TransactionEvent, encode_event
from molam_workloads.core.rules import AlertRuleSpec, save_rule

from .conftest import CHART, Renderer, find, kubectl, new_namespace
from .test_monitoring import referenced_metrics

pytestmark = pytest.mark.kube  # the operator process watches the local kube-apiserver

CLI = str(Path(sys.executable).with_name("molam-analytics"))
DASHBOARD = CHART / "dashboards" / "molam-analytics.json"
NAMESPACE = "molam-scrape"  # the namespace label every target gets
SECRET = "scrape-test-secret-0123456789abcdef-0123"
# Series that only exist after events this test cannot cause: anomalies need SIRA's history,
# the operator's per-pipeline series need a pipeline on a cluster that runs its pods. Their
# names must still be in the scrape (Prometheus's metadata), and nothing else may be empty.
NEEDS_EVENTS = {
    "analytics_anomalies_total",
    "analytics_operator_consumer_desired_replicas",
    "analytics_operator_consumer_current_replicas",
    "analytics_operator_scale_events_total",
    "analytics_operator_reconcile_errors_total",
    "analytics_operator_lag_probe_errors_total",
}
DEADLINE = 60.0  # seconds for a query to show its series (1 s scrapes and evaluations)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(role: str = "admin") -> str:
    claims = {"sub": "scrape", "role": role, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class Scraped:
    prometheus: str  # base URL
    rules: list[dict[str, Any]]
    database_url: str
    logs: Path

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.prometheus + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", r.text
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_until_series(self, expr: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + DEADLINE
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def metadata(self) -> set[str]:
        return set(self.get("/api/v1/metadata"))

    def tail_logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.logs.glob("*.log"))
        )


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def scrape_db(admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    async with scratch_database(admin_dsn, "molam_prom", template_db) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def watched_namespace(crds_installed: None) -> Iterator[str]:
    """An empty namespace for the operator to watch: it reconciles nothing of anyone else's."""
    name = new_namespace("scrape")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


async def _topics(bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = {
        "KAFKA_TOPIC": f"wallet.scrape.{suffix}",
        "DLQ_TOPIC": f"dlq.scrape.{suffix}",
        "ANOMALY_TOPIC": f"anomaly.scrape.{suffix}",
        "KAFKA_CONSUMER_GROUP": f"scrape-{suffix}",
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(names[k], 2 if k == "KAFKA_TOPIC" else 1, 1) for k in names if "TOPIC" in k]
        )
    finally:
        await admin.close()
    return names


async def _seed(database_url: str) -> None:
    """Ten minutes at 80% failures and a rule on them whose webhook cannot be reached (a
    closed loopback port): it fires, and its notification fails."""
    conn = await asyncpg.connect(database_url)
    try:
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
        await conn.execute(
            """
            INSERT INTO txn_minute_agg (minute, merchant_id, country, currency, channel,
                tx_count, succeeded_count, failed_count, payment_count, payment_volume_local,
                gross_volume_local, refund_count)
            SELECT $1::timestamptz + g * interval '1 minute', 'M-1', 'SN', 'XOF',
                   'mobile_money', 10, 2, 8, 2, 0, 0, 0
            FROM generate_series(0, 11) g
            """,
            start,
        )
        spec = AlertRuleSpec.model_validate(
            {
                "metric": "failure_rate",
                "comparison": "gt",
                "threshold": 0.5,
                "windowMinutes": 10,
                "severity": "critical",
                "notify": {"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/hook"}]},
            }
        )
        await save_rule(conn, name="scrape-failures", source="api", spec=spec)
    finally:
        await conn.close()


async def _publish(bootstrap: str, topic: str) -> None:
    """Valid events, one of them twice, and a record that is not an event (dead-lettered)."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    values = [
        encode_event(
            TransactionEvent(
                event_id=uuid.uuid4().hex,
                txn_id=f"S-{i}",
                merchant_id=f"M-{i % 3}",
                occurred_at=now - timedelta(seconds=i),
                amount=Decimal("1000.00") + i,
                currency="XOF",
                country="SN",
                channel="mobile_money",
                type="payment",
                status="succeeded" if i % 5 else "failed",
                fee=Decimal("1.00"),
            )
        )
        for i in range(40)
    ]
    values += [values[0], b"this is not an event"]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(topic, value, key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _wait_http(url: str, what: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(300):
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}"
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not answer at {url}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _rule_file(render: Renderer, folder: Path) -> tuple[Path, list[dict[str, Any]]]:
    spec = find(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")["spec"]
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path, [r for g in spec["groups"] for r in g["rules"]]


@pytest.fixture(scope="module")
async def scraped(
    scrape_db: str,
    kafka_bootstrap: str,
    redis_base_url: str,
    watched_namespace: str,
    render: Renderer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Scraped]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus is missing: run stack/system-deps.sh (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("scrape")
    logs = tmp / "logs"
    logs.mkdir()
    redis_url = own_redis_url(redis_base_url)
    topics = await _topics(kafka_bootstrap)
    await _seed(scrape_db)
    env = {
        **os.environ,
        "DATABASE_URL": scrape_db,
        "REDIS_URL": redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ANALYTICS_JWT_SECRET": SECRET,
        "REPORTING_CURRENCY": "USD",
        "SIRA_ENABLED": "false",
        **topics,
    }
    # The view's last refresh, recorded in analytics_view_refreshes before the API starts.
    refresh = await asyncio.create_subprocess_exec(
        CLI,
        "refresh-views",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(refresh.communicate(), 60)
    assert refresh.returncode == 0, out.decode()

    ports = {name: free_port() for name in ("api", "consumer", "alerts", "operator")}
    commands = {
        "api": ([CLI, "api", "--host", "127.0.0.1", "--port", str(ports["api"])], {}),
        "consumer": (
            [CLI, "consume"],
            {
                "METRICS_PORT": str(ports["consumer"]),
                "METRICS_ADDRESS": "127.0.0.1",
                "KAFKA_SESSION_TIMEOUT_MS": "6000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
                "INGEST_POLL_TIMEOUT_MS": "200",
            },
        ),
        "alerts": (
            [CLI, "alerts", "--interval", "1"],
            {
                "METRICS_PORT": str(ports["alerts"]),
                "METRICS_ADDRESS": "127.0.0.1",
                "ALERT_WEBHOOK_ALLOW": "127.0.0.1",
                "ALERTS_WEBHOOK_BACKOFF_BASE_SECONDS": "0.5",
            },
        ),
        "operator": (
            [CLI, "operator", "--namespace", watched_namespace],
            {
                "OPERATOR_METRICS_PORT": str(ports["operator"]),
                "OPERATOR_METRICS_ADDRESS": "127.0.0.1",
            },
        ),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (argv, extra) in commands.items():
            with (logs / f"{name}.log").open("wb") as out:
                procs[name] = subprocess.Popen(  # noqa: ASYNC220 (spawns, does not wait)
                    argv, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT
                )
        for name, port in ports.items():
            await _wait_http(f"http://127.0.0.1:{port}/metrics", name, procs)

        await _publish(kafka_bootstrap, topics["KAFKA_TOPIC"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['api']}") as api:
            auth = {"Authorization": f"Bearer {token()}"}
            for _ in range(2):  # a miss, then a hit
                r = await api.get("/v1/kpis", headers=auth)
                assert r.status_code == 200, r.text
            assert (await api.get("/v1/kpis")).status_code == 401  # a denial

        rules_path, rules = _rule_file(render, tmp)
        web = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_path)],
            "scrape_configs": [
                {
                    "job_name": name,
                    "metrics_path": "/metrics",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{port}"],
                            "labels": {"namespace": NAMESPACE, "pod": f"{name}-0"},
                        }
                    ],
                }
                for name, port in ports.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (logs / "prometheus.log").open("wb") as out:
            procs["prometheus"] = subprocess.Popen(  # noqa: ASYNC220 (spawns, does not wait)
                [
                    prometheus,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await _wait_http(f"http://127.0.0.1:{web}/-/ready", "prometheus", procs)
        yield Scraped(f"http://127.0.0.1:{web}", rules, scrape_db, logs)
    finally:
        for proc in procs.values():
            _stop(proc)


# ---------------------------------------------------------------------------------- tests


def _targets_up(scraped: Scraped) -> dict[str, str]:
    targets = scraped.get("/api/v1/targets")["activeTargets"]
    return {t["labels"]["job"]: t["health"] for t in targets}


def test_every_process_is_scraped(scraped: Scraped) -> None:
    deadline = time.monotonic() + DEADLINE
    health = _targets_up(scraped)
    while set(health.values()) != {"up"} and time.monotonic() < deadline:
        time.sleep(0.5)
        health = _targets_up(scraped)
    assert health == dict.fromkeys(("api", "consumer", "alerts", "operator"), "up"), health


def _measured(expr: str) -> str:
    """An alert's expression with its final comparison made a ``bool`` one: every series of
    the measurement comes back (0 or 1), firing or not."""
    measured, n = re.subn(r"([<>]=?)\s*([0-9.eE+-]+)\s*$", r"\1 bool \2", expr.strip())
    assert n == 1, expr
    return measured


def test_every_alert_expression_returns_series(scraped: Scraped) -> None:
    assert len(scraped.rules) == 6
    empty = []
    for rule in scraped.rules:
        result = scraped.query_until_series(_measured(rule["expr"]))
        if not result:
            empty.append(rule["alert"])
        for series in result:
            assert series["metric"].get("namespace") == NAMESPACE, (rule["alert"], series)
    assert not empty, f"no series for {empty}\n{scraped.tail_logs()}"


def test_prometheus_evaluates_every_rule(scraped: Scraped) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        rules = [r for g in scraped.get("/api/v1/rules")["groups"] for r in g["rules"]]
        if all(r.get("lastEvaluation", "").startswith("2") for r in rules) and rules:
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert {r["name"] for r in rules} == {r["alert"] for r in scraped.rules}
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert len(queries) >= 20
    # Grafana's $namespace: the scraped namespace, as the variable's query would find it.
    return [(t, e.replace("$namespace", NAMESPACE)) for t, e in queries]


def test_every_dashboard_query_returns_series(scraped: Scraped) -> None:
    empty = []
    skipped = set()
    for title, expr in _dashboard_queries():
        used = referenced_metrics(expr)
        if used & NEEDS_EVENTS:
            skipped |= used & NEEDS_EVENTS
            continue
        if not scraped.query_until_series(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "no series for:\n" + "\n".join(empty) + "\n" + scraped.tail_logs()
    assert skipped == NEEDS_EVENTS  # the list names only what the dashboard queries


def test_every_metric_the_dashboard_and_rules_use_is_in_the_scrape(scraped: Scraped) -> None:
    used: set[str] = set()
    for _, expr in _dashboard_queries():
        used |= referenced_metrics(expr)
    for rule in scraped.rules:
        used |= referenced_metrics(rule["expr"])
    # Prometheus's metadata holds each scraped family's name, samples or not: a histogram's
    # without _bucket, a counter's without _total when the target spoke OpenMetrics.
    families = {re.sub(r"_bucket$", "", name) for name in used}

    def missing() -> set[str]:
        known = scraped.metadata()
        return {f for f in families if f not in known and f.removesuffix("_total") not in known}

    deadline = time.monotonic() + DEADLINE
    while missing() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not missing(), sorted(missing())


async def test_view_refresh_is_published_from_the_database(scraped: Scraped) -> None:
    conn = await asyncpg.connect(scraped.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT duration_ms, extract(epoch FROM now() - refreshed_at)::float8 AS age"
            " FROM analytics_view_refreshes WHERE view_name = 'mv_txn_daily_agg'"
        )
    finally:
        await conn.close()
    assert row is not None and row["duration_ms"] is not None
    selector = f'{{namespace="{NAMESPACE}", view="mv_txn_daily_agg"}}'
    (duration,) = scraped.query_until_series(f"analytics_view_refresh_duration_seconds{selector}")
    assert float(duration["value"][1]) == pytest.approx(row["duration_ms"] / 1000)
    assert duration["metric"]["job"] == "api"
    (age,) = scraped.query_until_series(f"analytics_view_refresh_age_seconds{selector}")
    # Counted on from the database's clock to the scrape, at most a second or two ago.
    assert row["age"] - 3 <= float(age["value"][1]) <= row["age"] + 0.5
