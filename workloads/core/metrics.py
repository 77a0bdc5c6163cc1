"""Prometheus metrics, among them the names the runbook (docs/analytics-runbook.md) queries.

They live in one module so that every name is defined once; each process exports the ones it
moves (the others stay at zero). Labels are kept low-cardinality: no merchant ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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

# Batch jobs
VIEW_REFRESH_SECONDS = Gauge(
    "analytics_view_refresh_duration_seconds", "Duration of the last view refresh"
)


def serve_metrics(port: int) -> None:
    """Expose /metrics on ``port`` from a daemon thread (processes without an HTTP server)."""
    if port:
        start_http_server(port)


def observe_pool(pool: object) -> None:
    """Copy an asyncpg pool's usage into the DB pool gauges (runbook: connections > 80%)."""
    size = pool.get_size()  # type: ignore[attr-defined]
    idle = pool.get_idle_size()  # type: ignore[attr-defined]
    DB_POOL_SIZE.labels("in_use").set(size - idle)
    DB_POOL_SIZE.labels("idle").set(idle)
    DB_POOL_MAX.set(pool.get_max_size())  # type: ignore[attr-defined]
