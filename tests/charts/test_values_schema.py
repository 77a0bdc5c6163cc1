"""values.schema.json against the CRD: the chart accepts every spec field the CRD accepts.

The pipeline part of the schema is generated from crds/analyticspipelines.yaml
(charts/values_schema.py); the real helm validates values against it and renders them into the
AnalyticsPipeline, which the operator's own parser then reads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from molam_operator.spec import parse_spec

from .conftest import CHART, ROOT, Renderer, find, run_helm

CRD = ROOT / "crds" / "analyticspipelines.yaml"

# Values for the fields whose CRD schema has a pattern or a shape a generic value cannot meet.
SAMPLES: dict[str, Any] = {
    "image": "registry.example/molam-analytics:1.2.3",
    "reportingCurrency": "XOF",
    "kafka.bootstrapServers": "kafka-1:9093,kafka-2:9093",
    "kafka.topic": "payments.v2",
    "kafka.anomalyTopic": "payments.anomaly",
    "kafka.dlqTopic": "payments.dlq",
    "kafka.tls.secretRef.caKey": "ca.crt",
    "kafka.tls.secretRef.certKey": "tls.crt",
    "kafka.tls.secretRef.keyKey": "tls.key",
    "alerts.alertmanagers": ["http://alertmanager.monitoring:9093"],
    "views.refreshSchedule": "*/5 * * * *",
}
RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]


def _sample(path: str, schema: dict[str, Any]) -> Any:
    """A value the CRD accepts for ``path``, other than its default where it can be."""
    if path in SAMPLES:
        return SAMPLES[path]
    if path.endswith("resources"):
        return RESOURCES
    if "enum" in schema:
        return schema["enum"][-1]  # the last: SASL_SSL, so that sasl and tls both apply
    kind = schema["type"]
    if kind == "boolean":
        return not schema.get("default", False)
    if kind in ("integer", "number"):
        return schema["maximum"] if "maximum" in schema else schema.get("minimum", 0) + 7
    if kind == "string":
        return "x" * max(3, schema.get("minLength", 0))
    if kind == "array":
        return [_sample(f"{path}[]", schema["items"])]
    raise AssertionError(f"no sample for {path}: {schema}")


def _fill(schema: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """Every field of ``schema`` set: the values, and the paths of their leaves."""
    values: dict[str, Any] = {}
    leaves: list[str] = []
    for name, sub in schema["properties"].items():
        path = f"{prefix}{name}"
        if "properties" in sub and not path.endswith("resources"):
            values[name], more = _fill(sub, f"{path}.")
            leaves += more
        else:
            values[name] = _sample(path, sub)
            leaves.append(path)
    return values, leaves


def _at(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc[part]
    return doc


def _docs(out: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(out) if d]


def test_committed_schema_is_generated_from_the_crd():
    script = ROOT / "charts" / "values_schema.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_crd_field_is_accepted_and_reaches_the_spec(render: Renderer):
    spec_values, leaves = _fill(_spec_schema())
    assert len(leaves) > 40  # the walk reached the nested fields
    spec = find(render({"pipeline": {"create": True, **spec_values}}), "AnalyticsPipeline")["spec"]
    for path in leaves:
        assert _at(spec, path) == _at(spec_values, path), path
    cfg = parse_spec(spec)  # and the operator reads it
    assert cfg.scaling.target_drain_seconds == spec_values["consumer"]["targetDrainSeconds"]
    assert cfg.kafka_security.sasl is not None and cfg.kafka_security.tls is not None


def test_fields_the_hand_written_schema_refused_pass_with_set(helm_home: Path):
    sets = {
        "pipeline.consumer.targetDrainSeconds": "120",
        "pipeline.consumer.resources.limits.memory": "1Gi",
        "pipeline.api.cacheTtlSeconds": "5",
        "pipeline.database.poolMax": "20",
        "pipeline.alerts.webhookSecret.secretRef.name": "hooks",
        "pipeline.views.suspend": "true",
        "pipeline.logLevel": "DEBUG",
    }
    args = ["--set", "pipeline.create=true"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    run_helm(helm_home, "lint", "--strict", str(CHART), *args)
    out = run_helm(helm_home, "template", "ma", str(CHART), *args).stdout
    spec = find(_docs(out), "AnalyticsPipeline")["spec"]
    for key, value in sets.items():
        assert str(_at(spec, key.removeprefix("pipeline."))).lower() == value.lower(), key


@pytest.mark.parametrize(
    "values",
    [
        {"consumer": {"targetDrainSeconds": 0}},  # minimum 1
        {"consumer": {"minReplicas": -1}},
        {"kafka": {"bootstrapServers": "no-port"}},
        {"kafka": {"topc": "misspelt"}},  # the API server would prune it silently
        {"api": {"resources": {"limits": {"memory": "lots"}}}},
        {"logLevel": "TRACE"},
        {"sira": {"zThreshold": 0}},  # exclusive minimum
    ],
)
def test_what_the_crd_refuses_the_chart_refuses(render: Renderer, values: dict[str, Any]):
    proc = render.text({"pipeline": {"create": True, **values}}, check=False)
    assert proc.returncode != 0, values


# ---------------------------------------------------------------- decimals given with --set

# `helm --set` passes a decimal as a string ("0.8"): each threshold takes a number or the string
# of one, in the same range. key: (a string accepted, strings refused)
THRESHOLDS = {
    "apiLatencyP95.thresholdSeconds": ("0.25", ["0", "0.0", "-1"]),
    "consumerLag.threshold": ("7500.5", ["-1", "-0.5"]),
    "cacheHitRate.threshold": ("0.8", ["1.5", "-0.1"]),
    "dbConnections.threshold": ("0.9", ["0", "0.0", "1.01"]),
    "aggregationLag.thresholdSeconds": ("120.5", ["0.00"]),
    "alertRuleFailures.thresholdPerHour": ("2.5", ["-2"]),
}


def _set_rule(
    helm_home: Path, key: str, value: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_helm(
        helm_home,
        *("template", "ma", str(CHART), "--set", "prometheusRule.enabled=true"),
        *("--set", f"prometheusRule.rules.{key}={value}"),
        check=check,
    )


def _alert(out: str, name: str) -> dict[str, Any]:
    rule = find(_docs(out), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == name]
    assert len(alerts) == 1, name
    return alerts[0]  # type: ignore[no-any-return]


def test_cache_hit_rate_threshold_with_set(helm_home: Path):
    out = _set_rule(helm_home, "cacheHitRate.threshold", "0.8").stdout
    assert _alert(out, "AnalyticsCacheHitRateLow")["expr"].endswith(") < 0.8")


def test_a_db_pool_threshold_given_with_set_is_a_percentage_in_the_summary(helm_home: Path):
    out = _set_rule(helm_home, "dbConnections.threshold", "0.9").stdout
    assert "more than 90% in use" in out


@pytest.mark.parametrize("key", sorted(THRESHOLDS))
def test_every_threshold_takes_a_numeric_string_in_its_range(helm_home: Path, key: str):
    good, bad = THRESHOLDS[key]
    assert f" {good}" in _set_rule(helm_home, key, good).stdout
    for value in [*bad, "abc", "0.8 or vector(1)"]:
        proc = _set_rule(helm_home, key, value, check=False)
        assert proc.returncode != 0, (key, value)
        assert key.rsplit(".", 1)[-1] in proc.stderr, proc.stderr
