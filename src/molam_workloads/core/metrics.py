"""Prometheus metrics, among them the names the runbook (docs/analytics-runbook.md) queries.

They live in one module so that every name is defined once; each process exports the ones it
moves (the others stay at zero). Labels are kept low-cardinality: no merchant ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import make_server

import asyncpg
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import (
    ThreadingWSGIServer,
    _get_best_family,
    _SilentHandler,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Every component: the backing services it waits for (core.faults.Outage; docs/faults.md).
WAITING_FOR = Gauge(
    "analytics_waiting_for",
    "1 while the component waits for the service to come back",
    ["component", "service"],
)
DEPENDENCY_ERRORS = Counter(
    "analytics_dependency_errors",
    "Calls to a backing service that failed because it was away",
    ["component", "service"],
)

# API
API_REQUESTS = Counter(
    "analytics_api_requests", "API requests served", ["method", "route", "status"]
)
API_LATENCY = Histogram(
    "analytics_api_request_duration_seconds",
    "API request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CACHE_HITS = Counter("analytics_cache_hits", "Summary queries answered from Redis")
CACHE_MISSES = Counter("analytics_cache_misses", "Summary queries computed in PostgreSQL")
AUTH_DENIALS = Counter("analytics_api_denials", "Requests refused by RBAC", ["status"])

# Ingestion
INGEST_EVENTS = Counter(
    "analytics_ingest_events", "Events consumed and counted", ["result"]
)  # result: counted | duplicate
INGEST_ERRORS = Counter(
    "analytics_ingest_errors", "Events sent to the dead-letter topic", ["reason"]
)
INGEST_UNREADABLE = Counter(
    "analytics_ingest_unreadable_records",
    "Offsets skipped because the client could not unpack their batch (dead-lettered)",
    ["reason"],
)  # reason: unsupported_codec | corrupt_batch | record_too_large | unreadable_batch
INGEST_BATCH_SECONDS = Histogram(
    "analytics_ingest_batch_duration_seconds",
    "Time to commit one batch (aggregates + ledger + offsets)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
AGGREGATION_LAG = Gauge(
    "analytics_aggregation_lag_seconds",
    "Event time to committed aggregate, newest event of the last batch",
)
CONSUMER_LAG = Gauge(
    "analytics_consumer_lag", "Messages behind the end of the partition", ["partition"]
)
INGEST_OFFSET_LOSS = Counter(
    "analytics_ingest_offset_loss",
    "Stored offsets found outside their partition's log (truncated, re-created, expired)",
    ["kind"],
)  # kind: past_end | before_start
INGEST_OFFSETS_SKIPPED = Counter(
    "analytics_ingest_offsets_lost",
    "Offsets below a partition's log start that were never read (deleted before consumed)",
)
LEDGER_TRIMMED = Counter(
    "analytics_ledger_trimmed_rows",
    "Exactly-once ledger rows deleted by LEDGER_RETENTION_DAYS",
)
DB_POOL_SIZE = Gauge("analytics_db_pool_connections", "Open pool connections", ["state"])
DB_POOL_MAX = Gauge("analytics_db_pool_max_connections", "Pool size limit (DB_POOL_MAX)")

# SIRA
ANOMALIES = Counter("analytics_anomalies", "Anomalies detected", ["metric", "direction"])
SIRA_FAILURES = Counter("analytics_sira_failures", "Detector calls that raised (ingestion went on)")

# Alerts
ALERT_EVALUATIONS = Counter("analytics_alert_evaluations", "Alert evaluation cycles run")
ALERT_CYCLE_SECONDS = Histogram(
    "analytics_alert_cycle_duration_seconds",
    "Time to evaluate all active rules once",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)
ALERT_RULE_FAILURES = Counter(
    "analytics_alert_rule_failures", "Rule evaluations or notifications that failed", ["kind"]
)
ALERTS_FIRED = Counter("analytics_alerts_fired", "Alerts that started firing", ["severity"])
ALERTS_FIRING = Gauge("analytics_alerts_firing", "Alerts currently firing", ["severity"])


class ViewRefreshes(Collector):
    """The last refresh of each materialized view, read from ``analytics_view_refreshes``.

    ``refresh-views`` runs as a short-lived job that nothing scrapes, so the API publishes what
    the job records: ``update(pool)`` (awaited by the API's /metrics) reads the table at most
    once per ``ttl`` seconds, and ``collect`` reports the durations and the ages, the ages
    counted on from the database's clock at the read. Until the first read it reports nothing.
    """

    QUERY = (
        "SELECT view_name, duration_ms,"
        " extract(epoch FROM clock_timestamp() - refreshed_at)::float8 AS age"
        " FROM analytics_view_refreshes"
    )

    def __init__(self, ttl: float = 15.0, timeout: float = 2.0) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._rows: list[tuple[str, int | None, float]] = []
        self._read_at: float | None = None  # time.monotonic() of the last read
        self._lock = asyncio.Lock()

    async def update(self, pool: asyncpg.Pool) -> None:
        """Re-read the table when the last read is older than ``ttl``. A failed read keeps the
        previous rows (their ages go on growing) and is logged."""
        async with self._lock:
            if self._read_at is not None and time.monotonic() - self._read_at < self.ttl:
                return
            try:
                rows = await pool.fetch(self.QUERY, timeout=self.timeout)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not read analytics_view_refreshes: %r", exc)
                return
            self._rows = [(r["view_name"], r["duration_ms"], r["age"]) for r in rows]
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        duration = GaugeMetricFamily(
            "analytics_view_refresh_duration_seconds",
            "Duration of the view's last refresh by refresh-views (none after a manual one)",
            labels=["view"],
        )
        age = GaugeMetricFamily(
            "analytics_view_refresh_age_seconds",
            "Seconds since the view was last refreshed",
            labels=["view"],
        )
        since = 0.0 if self._read_at is None else time.monotonic() - self._read_at
        for view, duration_ms, age_seconds in self._rows:
            if duration_ms is not None:
                duration.add_metric([view], duration_ms / 1000)
            age.add_metric([view], age_seconds + since)
        yield duration
        yield age

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self.collect()


# Batch jobs: published by the API from the database (see ViewRefreshes).
VIEW_REFRESHES = ViewRefreshes()
REGISTRY.register(VIEW_REFRESHES)


def serve_metrics(
    port: int, address: str = "0.0.0.0", health: Callable[[], Mapping[str, object]] | None = None
) -> None:
    """Expose /metrics on ``address:port`` from a daemon thread (processes without an HTTP
    server); port 0 serves nothing. ``health``: also answer /health with its JSON (always 200:
    a process waiting for someone else's outage must not be restarted for it)."""
    if not port:
        return
    if health is None:
        start_http_server(port, addr=address)
        return
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/health":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        body = json.dumps(health(), default=str).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, addr = _get_best_family(address, port)  # type: ignore[no-untyped-call]
    httpd = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


def observe_pool(pool: object) -> None:
    """Copy an asyncpg pool's usage into the DB pool gauges (runbook: connections > 80%)."""
    size = pool.get_size()  # type: ignore[attr-defined]
    idle = pool.get_idle_size()  # type: ignore[attr-defined]
    DB_POOL_SIZE.labels("in_use").set(size - idle)
    DB_POOL_SIZE.labels("idle").set(idle)
    DB_POOL_MAX.set(pool.get_max_size())  # type: ignore[attr-defined]
