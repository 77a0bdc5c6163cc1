"""The alerts evaluator's egress NetworkPolicy: off by default; when on, it selects exactly the
pods the operator labels as the pipeline's alerts evaluator and lets them reach DNS, its
database, the brokers (the topic's lag), public webhook ports and the listed extra peers only."""

from __future__ import annotations

import ipaddress

from molam_operator.manifests import selector_labels

from .conftest import Renderer, find


def test_off_by_default(render: Renderer) -> None:
    assert not [o for o in render({"pipeline": {"create": True}}) if o["kind"] == "NetworkPolicy"]


def test_on_it_selects_the_alerts_pods_and_refuses_internal_ranges(render: Renderer) -> None:
    extra = {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}}}],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }
    objs = render(
        {
            "pipeline": {"name": "payments"},
            "networkPolicy": {"alertsEgress": {"enabled": True, "extraEgress": [extra]}},
        }
    )
    np = find(objs, "NetworkPolicy", "payments-alerts-egress")
    spec = np["spec"]
    # The very labels the operator puts on the alerts Deployment's pods.
    assert spec["podSelector"]["matchLabels"] == selector_labels("payments", "alerts")
    assert spec["policyTypes"] == ["Egress"]
    dns, database, kafka, public, listed = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert database == {"ports": [{"port": 5432, "protocol": "TCP"}]}  # networkPolicy.database
    assert kafka == {"ports": [{"port": 9092, "protocol": "TCP"}]}  # networkPolicy.kafka: the lag
    block = public["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    blocked = [ipaddress.ip_network(c) for c in block["except"]]
    # Ranges compared with the rendered policy's CIDRs: no address is named, nothing is sent.
    internal = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16")
    for cidr in internal:
        assert any(ipaddress.ip_network(cidr).subnet_of(n) for n in blocked), cidr
    assert [p["port"] for p in public["ports"]] == [443, 80]
    assert listed == extra


def test_the_schema_refuses_a_bad_port(render: Renderer) -> None:
    proc = render.text(
        {"networkPolicy": {"alertsEgress": {"enabled": True, "webhookPorts": [0]}}}, check=False
    )
    assert proc.returncode != 0 and "webhookPorts" in proc.stderr
