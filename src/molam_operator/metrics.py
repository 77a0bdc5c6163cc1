"""The operator's own Prometheus metrics (the workloads' names live in molam_workloads.core)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_PIPELINE = ["namespace", "pipeline"]

CONSUMER_LAG = Gauge(
    "analytics_operator_consumer_lag",
    "Total consumer-group lag (messages) at the last successful poll",
    _PIPELINE,
)
DESIRED_REPLICAS = Gauge(
    "analytics_operator_consumer_desired_replicas", "Consumer replicas the scaler wants", _PIPELINE
)
CURRENT_REPLICAS = Gauge(
    "analytics_operator_consumer_current_replicas",
    "Consumer replicas the Deployment has",
    _PIPELINE,
)
SCALE_EVENTS = Counter(
    "analytics_operator_scale_events",
    "Consumer scale changes made by the operator",
    [*_PIPELINE, "direction"],
)
LAG_PROBE_ERRORS = Counter(
    "analytics_operator_lag_probe_errors",
    "Lag polls that could not measure the lag",
    [*_PIPELINE, "reason"],
)
RECONCILE_ERRORS = Counter(
    "analytics_operator_reconcile_errors",
    "Reconciliations that failed (retried)",
    ["kind", "reason"],
)
RECONCILE_SECONDS = Histogram(
    "analytics_operator_reconcile_duration_seconds",
    "Time to bring one resource's children or rule in shape",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CHILDREN_RESTORED = Counter(
    "analytics_operator_children_restored",
    "Children created or patched back after they were deleted or edited by hand",
    ["kind"],
)
