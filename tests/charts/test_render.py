"""The chart rendered and linted by the real helm binary, default and with every feature on."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from molam_operator.allowlist import AllowLists
from molam_operator.settings import OperatorSettings

from .conftest import ALL_FEATURES, CHART, Renderer, find, run_helm, values_file

DEFAULT_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
}


@pytest.mark.parametrize("features", ["default", "all"])
def test_lint_strict(helm_home, tmp_path, features):
    args = ["lint", "--strict", str(CHART)]
    if features == "all":
        args += ["--values", str(values_file(tmp_path, ALL_FEATURES))]
    out = run_helm(helm_home, *args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize(
    ("kube_version", "ok"), [("1.20.2", True), ("1.31.0", True), ("1.19.9", False)]
)
def test_kube_version_range(helm_home, kube_version, ok):
    proc = run_helm(
        helm_home, "template", "ma", str(CHART), "--kube-version", kube_version, check=False
    )
    assert (proc.returncode == 0) == ok, proc.stderr


def test_default_render_is_operator_only(render: Renderer):
    objs = render()
    assert {o["kind"] for o in objs} == DEFAULT_KINDS
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "ma"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "molam"


def test_all_features_render(render: Renderer):
    objs = render(ALL_FEATURES)
    kinds = {o["kind"] for o in objs}
    # Job (and a Role): the pre-delete hook that deletes the pipeline before the operator.
    assert kinds == DEFAULT_KINDS | {
        "Secret", "AnalyticsPipeline", "PrometheusRule", "PodMonitor", "Job", "NetworkPolicy"
    }  # fmt: skip
    pipeline = find(objs, "AnalyticsPipeline", "analytics")
    spec = pipeline["spec"]
    assert spec["image"] == "molam-analytics:0.1.0"
    assert spec["database"] == {"secretRef": {"name": "analytics-db", "key": "url"}}
    assert spec["redis"] == {"secretRef": {"name": "analytics-redis", "key": "url"}}
    assert spec["consumer"]["lagThreshold"] == 5000
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    assert secrets["analytics-db"]["stringData"]["url"].startswith("postgresql://")
    assert secrets["analytics-redis"]["stringData"]["url"] == "redis://redis:6379/0"
    dashboard = find(objs, "ConfigMap", "ma-molam-analytics-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_operator_deployment(render: Renderer):
    dep = find(render(), "Deployment", "ma-molam-analytics-operator")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "ma-molam-analytics"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == "molam-analytics:0.1.0"
    # Namespaced by default: the release namespace only.
    assert c["args"] == ["operator", "--namespace=molam", "--liveness=http://0.0.0.0:8080/healthz"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9104}
    config = find(render(), "ConfigMap", "ma-molam-analytics-operator")["data"]
    assert config["OPERATOR_METRICS_PORT"] == "9104"
    # No fallback database unless a Secret is named.
    assert config["OPERATOR_DATABASE_FALLBACK"] == "false"
    assert "DATABASE_URL" not in {e["name"] for e in c["env"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_checksum_annotations_roll_the_pod_on_config_change(render: Renderer):
    def annotations(values: dict[str, Any] | None) -> dict[str, str]:
        dep = find(render(values), "Deployment")
        return dep["spec"]["template"]["metadata"]["annotations"]

    base = annotations(None)
    assert re.fullmatch(r"[0-9a-f]{64}", base["checksum/config"])
    changed = annotations({"operator": {"logLevel": "DEBUG"}})
    assert changed["checksum/config"] != base["checksum/config"]
    assert changed["checksum/rbac"] == base["checksum/rbac"]
    assert annotations(None) == base  # stable across renders


def test_metrics_off_turns_the_endpoint_off(render: Renderer):
    objs = render({"operator": {"metrics": {"enabled": False}}})
    assert find(objs, "ConfigMap")["data"]["OPERATOR_METRICS_PORT"] == "0"
    assert not [o for o in objs if o["kind"] == "Service"]
    (c,) = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in c["ports"]] == ["health"]


def test_operator_fallback_database_from_secret(render: Renderer):
    objs = render({"operator": {"database": {"secretRef": {"name": "op-db", "key": "dsn"}}}})
    (c,) = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "op-db", "key": "dsn"}}
    config = find(objs, "ConfigMap", "ma-molam-analytics-operator")["data"]
    assert config["OPERATOR_DATABASE_FALLBACK"] == "true"


def test_pod_monitor_scrapes_operator_and_workloads(render: Renderer):
    pm = find(render(ALL_FEATURES), "PodMonitor")["spec"]
    assert pm["namespaceSelector"] == {"matchNames": ["molam"]}
    cluster_wide = {**ALL_FEATURES, "operator": {"watchNamespaces": []}}
    assert find(render(cluster_wide), "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    assert {e["port"] for e in pm["podMetricsEndpoints"]} == {"http", "metrics"}
    pm = find(
        render({"podMonitor": {"enabled": True}, "operator": {"watchNamespaces": ["x"]}}),
        "PodMonitor",
    )
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["x", "molam"]}


def test_default_rbac_is_the_release_namespace_only(render: Renderer):
    """Creating an AnalyticsPipeline makes the operator run pods and read Secrets: by default it
    may do so in its own namespace only; cluster-wide takes an explicit empty list."""
    objs = render()
    (role,) = [o for o in objs if o["kind"] == "Role"]
    (binding,) = [o for o in objs if o["kind"] == "RoleBinding"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "molam"
    granted = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"secrets", "deployments", "analyticspipelines"} <= granted
    for o in objs:
        if o["kind"] == "ClusterRole":
            resources = {r for rule in o["rules"] for r in rule["resources"]}
            assert resources == {"customresourcedefinitions", "namespaces"}, o["metadata"]
    wide = render({"operator": {"watchNamespaces": []}})
    assert not [o for o in wide if o["kind"] in ("Role", "RoleBinding")]
    cluster = find(wide, "ClusterRole", "ma-molam-analytics-operator")
    assert "secrets" in {r for rule in cluster["rules"] for r in rule["resources"]}
    args = find(wide, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args


def test_allow_lists_reach_the_operator(render: Renderer):
    config = find(render(), "ConfigMap", "ma-molam-analytics-operator")["data"]
    assert "OPERATOR_IMAGE_ALLOW" not in config and "OPERATOR_SECRET_ALLOW" not in config
    values = {
        "operator": {
            "imageAllow": ["ghcr.io/molam", "registry.local:5000"],
            "secretAllow": ["analytics-*", "kafka-credentials"],
        }
    }
    config = find(render(values), "ConfigMap", "ma-molam-analytics-operator")["data"]
    assert config["OPERATOR_IMAGE_ALLOW"] == "ghcr.io/molam,registry.local:5000"
    assert config["OPERATOR_SECRET_ALLOW"] == "analytics-*,kafka-credentials"
    # The operator parses what the chart renders.
    allow = OperatorSettings(
        database_url="postgresql://x@h/db",
        operator_image_allow=config["OPERATOR_IMAGE_ALLOW"],
        operator_secret_allow=config["OPERATOR_SECRET_ALLOW"],
    ).allow
    assert allow == AllowLists(
        ("ghcr.io/molam", "registry.local:5000"), ("analytics-*", "kafka-credentials")
    )
    for bad in ({"imageAllow": ["a,b"]}, {"secretAllow": ["Bad_Name"]}, {"imageAllow": [""]}):
        proc = render.text({"operator": bad}, check=False)
        assert proc.returncode != 0, bad


def test_namespaced_mode_uses_roles(render: Renderer):
    objs = render({"operator": {"watchNamespaces": ["", "payments"]}})
    dep = find(objs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" not in args
    assert "--namespace=molam" in args and "--namespace=payments" in args
    roles = sorted(o["metadata"]["namespace"] for o in objs if o["kind"] == "Role")
    bindings = sorted(o["metadata"]["namespace"] for o in objs if o["kind"] == "RoleBinding")
    assert roles == bindings == ["molam", "payments"]
    # Only Kopf's discovery stays cluster-wide.
    (cluster_role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert resources == {"customresourcedefinitions", "namespaces"}


def test_rbac_is_least_privilege(render: Renderer):
    objs = render()
    for role in (o for o in objs if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "*" not in rule.get("apiGroups", []), rule
            assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"]
            if "secrets" in rule["resources"]:  # DATABASE_URL of a pipeline, read by name
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"], rule


def test_pipeline_must_be_in_a_watched_namespace(render: Renderer):
    values = {"pipeline": {"create": True}, "operator": {"watchNamespaces": ["other"]}}
    proc = render.text(values, check=False)
    assert proc.returncode != 0 and "not among operator.watchNamespaces" in proc.stderr
    values["operator"]["watchNamespaces"] = ["", "other"]  # "" is the release namespace
    assert render.text(values).returncode == 0


def test_secrets_need_urls(render: Renderer):
    values = {"pipeline": {"create": True, "secrets": {"create": True}}}
    proc = render.text(values, check=False)
    assert proc.returncode != 0
    assert "pipeline.secrets.databaseUrl is required" in proc.stderr


def test_schema_rejects_unknown_and_ill_typed_values(render: Renderer):
    proc = render.text({"operatr": {"logLevel": "DEBUG"}}, check=False)
    assert proc.returncode != 0 and "operatr" in proc.stderr
    proc = render.text({"pipeline": {"consumer": {"minReplicas": "two"}}}, check=False)
    assert proc.returncode != 0 and "minReplicas" in proc.stderr
    proc = render.text({"operator": {"watchNamespaces": ["molam-*"]}}, check=False)
    assert proc.returncode != 0 and "watchNamespaces" in proc.stderr


def test_pipeline_kafka_security_is_passed_to_the_spec(render: Renderer):
    kafka = {
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-credentials"}},
        "tls": {"secretRef": {"name": "kafka-tls", "caKey": "ca.crt"}},
    }
    objs = render({"pipeline": {"create": True, "kafka": kafka}})
    spec = find(objs, "AnalyticsPipeline")["spec"]["kafka"]
    assert {k: spec[k] for k in kafka} == kafka
    assert (
        find(render({"pipeline": {"create": True}}), "AnalyticsPipeline")["spec"]["kafka"][
            "securityProtocol"
        ]
        == "PLAINTEXT"
    )
    for bad in ({"securityProtocol": "TLS"}, {"sasl": {"mechanism": "GSSAPI"}}):
        proc = render.text({"pipeline": {"create": True, "kafka": bad}}, check=False)
        assert proc.returncode != 0, bad


def test_extra_spec_is_merged_without_touching_values(render: Renderer):
    extra = {"kafka": {"topic": "other"}, "extra": {"depth": 1}}
    objs = render({"pipeline": {"create": True, "extraSpec": extra}})
    spec = find(objs, "AnalyticsPipeline")["spec"]
    assert spec["kafka"]["topic"] == "other"
    assert spec["kafka"]["bootstrapServers"] == "kafka:9092"
    assert spec["extra"] == {"depth": 1}


def test_notes_tell_what_to_do_next(helm_home, tmp_path):
    out = run_helm(helm_home, "install", "ma", str(CHART), "--dry-run=client", "-n", "molam")
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "rollout status deployment/ma-molam-analytics-operator" in notes
    assert "create secret generic analytics-db" in notes
    assert "kubectl apply --server-side" in notes


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        out: list[str] = []
        for k, v in node.items():
            out += _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def test_every_value_is_documented():
    """Each key of values.yaml has a comment above it, above its group of sibling keys, or above
    the key it belongs to (a Kubernetes object such as resources is documented as a whole)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(.*)$")
    documented: dict[int, bool] = {}
    undocumented = []
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        j = i - 1
        # skip sibling keys (and their nested lines) back to a comment or the parent key
        while j >= 0:
            prev = lines[j]
            pm = key_re.match(prev)
            if prev.strip().startswith("#") or not prev.strip():
                break
            if pm and len(pm.group(1)) < indent:
                break
            j -= 1
        ok = False
        if j >= 0 and lines[j].strip().startswith("#"):
            ok = True
        elif j >= 0 and key_re.match(lines[j]):
            ok = documented.get(j, False)
        documented[i] = ok
        if not ok:
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert len(_leaf_paths(values)) > 50


def test_readme_lists_every_top_level_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values:
        assert f"`{key}" in readme, key
