"""The workloads' NetworkPolicies (API ingress; api, consumer and refresh-views egress), rendered
by the real helm: off by default; when on, each selects exactly the pods the operator's builders
label, opens the ports those pods use, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from molam_operator import manifests
from molam_operator.spec import parse_spec

from .conftest import ROOT, Renderer, find

ALL_ON = {
    "pipeline": {"name": "payments"},
    "networkPolicy": {
        "apiIngress": {"enabled": True},
        "workloadsEgress": {"enabled": True},
        "alertsEgress": {"enabled": True},
    },
}
DNS = {(53, "UDP"), (53, "TCP")}


def _pod_labels(pipeline: str) -> dict[str, dict[str, str]]:
    """component -> the labels of its pods, from the operator's own builders."""
    spec = yaml.safe_load((ROOT / "crds" / "samples" / "analyticspipeline.yaml").read_text())
    out = {}
    for child in manifests.build_children(
        pipeline, parse_spec(spec["spec"]), cron_job_api_version="batch/v1"
    ):
        if child["kind"] == "Deployment":
            template = child["spec"]["template"]
        elif child["kind"] == "CronJob":
            template = child["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        out[manifests.component_of(child) or ""] = template["metadata"]["labels"]
    return out


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return all(labels.get(k) == v for k, v in wanted.items())


def _ports(rule: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


def test_off_by_default(render: Renderer) -> None:
    objs = render({"pipeline": {"create": True}})
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]


def test_each_policy_selects_exactly_its_workloads_pods(render: Renderer) -> None:
    policies = [o for o in render(ALL_ON) if o["kind"] == "NetworkPolicy"]
    names = {p["metadata"]["name"] for p in policies}
    assert names == {
        "payments-api-ingress",
        "payments-api-egress",
        "payments-consumer-egress",
        "payments-refresh-views-egress",
        "payments-alerts-egress",
    }
    pods = _pod_labels("payments")
    assert set(pods) == {"api", "consumer", "alerts", "refresh-views"}
    for policy in policies:
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        selected = {c for c, labels in pods.items() if _selects(policy, labels)}
        assert selected == {component}, policy["metadata"]["name"]
        assert policy["metadata"]["namespace"] == "molam"
        # Another pipeline's pods in the same namespace are not this one's.
        assert not any(_selects(policy, labels) for labels in _pod_labels("other").values())


def test_api_ingress_is_its_port_from_the_listed_peers(render: Renderer) -> None:
    policy = find(render(ALL_ON), "NetworkPolicy", "payments-api-ingress")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert _ports(rule) == {(manifests.API_PORT, "TCP")}  # the API's container port
    assert "from" not in rule  # no peers listed: any source, on that port only
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    values = {**ALL_ON, "networkPolicy": {"apiIngress": {"enabled": True, "from": [peer]}}}
    (rule,) = find(render(values), "NetworkPolicy", "payments-api-ingress")["spec"]["ingress"]
    assert rule["from"] == [peer]


@pytest.mark.parametrize(
    ("component", "services"),
    [
        ("api", {"database", "redis", "kafka"}),
        ("consumer", {"database", "redis", "kafka"}),
        ("refresh-views", {"database"}),
    ],
)
def test_egress_is_dns_and_the_services_the_workload_uses(
    render: Renderer, component: str, services: set[str]
) -> None:
    db_peer = {"ipBlock": {"cidr": "10.20.0.5/32"}}
    kafka_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}
    extra = {"to": [{"ipBlock": {"cidr": "10.30.0.0/24"}}], "ports": [{"port": 8200}]}
    values: dict[str, Any] = {
        "pipeline": {"name": "payments"},
        "networkPolicy": {
            "database": {"to": [db_peer], "ports": [{"port": 6432, "protocol": "TCP"}]},
            "kafka": {"to": [kafka_peer], "ports": [{"port": 9092}, {"port": 9093}]},
            "workloadsEgress": {"enabled": True, "extraEgress": [extra]},
        },
    }
    spec = find(render(values), "NetworkPolicy", f"payments-{component}-egress")["spec"]
    assert spec["policyTypes"] == ["Egress"]
    dns, *rules, listed = spec["egress"]
    assert _ports(dns) == DNS and "to" not in dns
    assert listed == extra
    expected = {
        "database": ({(6432, "TCP")}, [db_peer]),
        "redis": ({(6379, "TCP")}, None),  # the default: any address on Redis's port
        "kafka": ({(9092, "TCP"), (9093, "TCP")}, [kafka_peer]),
    }
    got = [(_ports(r), r.get("to")) for r in rules]
    assert got == [expected[s] for s in ("database", "redis", "kafka") if s in services]


def test_the_alerts_policy_reaches_its_database_and_brokers(render: Renderer) -> None:
    values = {**ALL_ON, "networkPolicy": {
        "alertsEgress": {"enabled": True},
        "database": {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}], "ports": [{"port": 5432}]},
        "kafka": {"to": [{"ipBlock": {"cidr": "10.20.0.9/32"}}], "ports": [{"port": 9093}]},
    }}  # fmt: skip
    egress = find(render(values), "NetworkPolicy", "payments-alerts-egress")["spec"]["egress"]
    database, kafka = egress[1], egress[2]
    assert _ports(database) == {(5432, "TCP")}
    assert database["to"] == [{"ipBlock": {"cidr": "10.20.0.5/32"}}]
    # The brokers: the evaluator asks the topic's lag (a stale ingestion is no data).
    assert _ports(kafka) == {(9093, "TCP")}
    assert kafka["to"] == [{"ipBlock": {"cidr": "10.20.0.9/32"}}]
    # Not Redis: the evaluator does not use it.
    assert not [r for r in egress if _ports(r) & {(6379, "TCP")}]


@pytest.mark.parametrize(
    "bad",
    [
        {"database": {"ports": [{"port": 0}]}},
        {"redis": {"ports": []}},
        {"kafka": {"ports": [{"port": 9092, "protocol": "HTTP"}]}},
        {"apiIngress": {"enabled": "yes"}},
        {"workloadsEgress": {"enabled": True, "egress": []}},
    ],
)
def test_the_schema_refuses_malformed_values(render: Renderer, bad: dict[str, Any]) -> None:
    proc = render.text({"networkPolicy": bad}, check=False)
    assert proc.returncode != 0 and "networkPolicy" in proc.stderr, proc.stderr
