"""The PrometheusRule and the Grafana dashboard: one alert per row of the runbook's "Key Metrics
to Monitor" table with its threshold, and only metrics that some component exports."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from .conftest import ALL_FEATURES, CHART, ROOT, Renderer, find

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "analytics-runbook.md"
DASHBOARD = CHART / "dashboards" / "molam-analytics.json"

# The runbook's table: row -> (alert, comparison and threshold as the rule writes them).
KEY_METRICS = {
    "API P95 latency": ("AnalyticsApiLatencyHigh", "> 0.5"),  # > 500ms
    "Consumer lag": ("AnalyticsConsumerLagHigh", "> 5000"),
    "Cache hit rate": ("AnalyticsCacheHitRateLow", "< 0.7"),  # < 70%
    "Database connections": ("AnalyticsDatabaseConnectionsHigh", "> 0.8"),  # > 80% of max
    "Aggregation lag": ("AnalyticsAggregationLagHigh", "> 300"),  # > 5 minutes
    "Alert rule failures": ("AnalyticsAlertRuleFailures", "> 10"),  # > 10/hour
}

# Modules that define the metrics the components export (imported, then read from the registry).
METRIC_MODULES = ["molam_workloads.core.metrics", "molam_operator.metrics"]


def exported_metric_names() -> set[str]:
    """Every series name the registry can expose, suffixes included (_total, _bucket, ...)."""
    for name in METRIC_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    names: set[str] = set()
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "gauge": [""],
        "info": ["_info"],
        "stateset": [""],
        "enum": [""],
        "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
        "unknown": [""],
    }
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def referenced_metrics(promql: str) -> set[str]:
    return set(re.findall(r"\banalytics_[a-z0-9_]+\b", promql))


def _balanced(expr: str) -> bool:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0 and expr.count("{") == expr.count("}")


@pytest.fixture(scope="module")
def rule(render: Renderer) -> dict[str, Any]:
    return find(render(ALL_FEATURES), "PrometheusRule")


def test_prometheus_rule_off_by_default(render: Renderer):
    assert not [o for o in render() if o["kind"] == "PrometheusRule"]


def test_key_metrics_table_matches_the_runbook():
    text = RUNBOOK.read_text().split("### Key Metrics to Monitor", 1)[1].split("###", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|--") and "Threshold" not in line
    ]
    assert {r[0] for r in rows} == set(KEY_METRICS)


def test_one_alert_per_runbook_row_with_its_threshold(rule: dict[str, Any]):
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {a for a, _ in KEY_METRICS.values()}
    for row, (alert, condition) in KEY_METRICS.items():
        r = alerts[alert]
        expr = " ".join(r["expr"].split())
        assert expr.endswith(condition), f"{row}: {expr!r} should end with {condition!r}"
        assert _balanced(expr), expr
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", r["for"])
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_thresholds_come_from_values(render: Renderer):
    values = {
        "prometheusRule": {
            "enabled": True,
            "rules": {"consumerLag": {"threshold": 10000, "for": "1m", "severity": "critical"}},
        }
    }
    (group,) = find(render(values), "PrometheusRule")["spec"]["groups"]
    lag = next(r for r in group["rules"] if r["alert"] == "AnalyticsConsumerLagHigh")
    assert lag["expr"].rstrip().endswith("> 10000")
    assert lag["for"] == "1m" and lag["labels"]["severity"] == "critical"


def test_alert_metrics_are_exported(rule: dict[str, Any]):
    exported = exported_metric_names()
    for r in rule["spec"]["groups"][0]["rules"]:
        used = referenced_metrics(r["expr"])
        assert used, r["alert"]
        assert used <= exported, f"{r['alert']} uses unexported {sorted(used - exported)}"


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def test_dashboard_metrics_are_exported():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_metric_names()
    exprs = _dashboard_exprs(dashboard)
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        assert _balanced(expr), expr
        used |= referenced_metrics(expr)
    assert used <= exported, f"dashboard uses unexported {sorted(used - exported)}"
    # The dashboard covers every metric the alerts use.
    alert_metrics = {
        "analytics_api_request_duration_seconds_bucket",
        "analytics_consumer_lag",
        "analytics_cache_hits_total",
        "analytics_cache_misses_total",
        "analytics_db_pool_connections",
        "analytics_db_pool_max_connections",
        "analytics_aggregation_lag_seconds",
        "analytics_alert_rule_failures_total",
    }
    assert alert_metrics <= used


def test_dashboard_is_portable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "molam-analytics"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel.get("description"), panel["title"]


def test_dashboard_configmap_carries_the_file(render: Renderer):
    cm = find(render(ALL_FEATURES), "ConfigMap", "ma-molam-analytics-dashboard")
    assert json.loads(cm["data"]["molam-analytics.json"]) == json.loads(DASHBOARD.read_text())
    assert not [o for o in render() if o["metadata"]["name"].endswith("-dashboard")]


def test_one_copy_of_the_dashboard():
    copies = [
        p
        for p in ROOT.rglob("*.json")
        if ".venv" not in p.parts
        and ".stack" not in p.parts
        and "uid" in p.read_text()[:2000]
        and '"Molam Analytics"' in p.read_text()
    ]
    assert copies == [DASHBOARD], copies


def test_exported_names_cover_suffixes():
    names = exported_metric_names()
    assert "analytics_api_requests_total" in names
    assert "analytics_api_request_duration_seconds_bucket" in names
    assert "analytics_consumer_lag" in names
    assert Path(importlib.import_module("molam_workloads.core.metrics").__file__ or "").exists()
