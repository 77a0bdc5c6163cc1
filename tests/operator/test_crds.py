"""The CRDs on the real kube-apiserver: accepted, samples valid, bad resources refused by name."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from helpers.kube import CRDS, apply, kubectl, kubectl_json
from helpers.samples import ALERT_RULE, PIPELINE, sample

pytestmark = pytest.mark.kube


def test_crds_are_structural_and_established(crds: None) -> None:
    for name in ("alertrules", "analyticspipelines"):
        crd = kubectl_json("get", "crd", f"{name}.analytics.molam.io")
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True"
        assert conditions.get("NonStructuralSchema", "False") == "False"
        version = crd["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
    ap = kubectl_json("get", "crd", "analyticspipelines.analytics.molam.io")
    assert ap["spec"]["names"]["shortNames"] == ["ap"]
    assert ap["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] == (
        ".spec.api.replicas"
    )
    ar = kubectl_json("get", "crd", "alertrules.analytics.molam.io")
    assert ar["spec"]["names"]["shortNames"] == ["ar"]


def _walk(schema: dict[str, Any], where: str) -> list[str]:
    """Fields without a description (metadata excepted)."""
    missing = []
    for key, sub in (schema.get("properties") or {}).items():
        here = f"{where}.{key}"
        if key == "metadata":
            continue
        if "description" not in sub:
            missing.append(here)
        missing += _walk(sub, here)
        if "items" in sub:
            missing += _walk(sub["items"], here + "[]")
    return missing


@pytest.mark.parametrize("file", ["alertrules.yaml", "analyticspipelines.yaml"])
def test_every_field_is_described(file: str) -> None:
    crd = yaml.safe_load((CRDS / file).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


def test_samples_are_accepted_with_defaults(namespace: str) -> None:
    out = kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "yaml",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(
            [sample("analyticspipeline.yaml", namespace), sample("alertrule.yaml", namespace)]
        ),
    ).stdout
    docs = yaml.safe_load(out)["items"]
    pipeline, rule = sorted(docs, key=lambda d: d["kind"], reverse=True)
    assert rule["kind"] == "AlertRule"
    assert rule["spec"]["notify"]["webhooks"][0]["sendResolved"] is True
    assert pipeline["spec"]["imagePullPolicy"] == "IfNotPresent"
    assert pipeline["spec"]["kafka"]["dlqTopic"] == "analytics.dlq"
    assert pipeline["spec"]["api"]["resources"]["requests"]["cpu"] == "100m"
    assert pipeline["spec"]["database"]["poolMax"] == 10


def _bad(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return doc


DELETE = object()


@pytest.mark.parametrize(
    ("sample_file", "path", "value", "field"),
    [
        (ALERT_RULE, "spec.metric", "failure_ratio", "spec.metric"),
        (ALERT_RULE, "spec.comparison", "above", "spec.comparison"),
        (ALERT_RULE, "spec.windowMinutes", 0, "spec.windowMinutes"),
        (ALERT_RULE, "spec.windowMinutes", 50000, "spec.windowMinutes"),
        (ALERT_RULE, "spec.for", "5 minutes", "spec.for"),
        (ALERT_RULE, "spec.severity", "fatal", "spec.severity"),
        (ALERT_RULE, "spec.scope.country", "Senegal", "spec.scope.country"),
        (ALERT_RULE, "spec.threshold", "high", "spec.threshold"),
        (ALERT_RULE, "spec.threshold", DELETE, "spec.threshold"),
        (ALERT_RULE, "spec.notify.webhooks", [{"url": "ftp://x"}], "spec.notify.webhooks"),
        (PIPELINE, "spec.image", DELETE, "spec.image"),
        (PIPELINE, "spec.kafka.bootstrapServers", "kafka", "spec.kafka.bootstrapServers"),
        (PIPELINE, "spec.consumer.maxReplicas", 0, "spec.consumer.maxReplicas"),
        (PIPELINE, "spec.consumer.minReplicas", -1, "spec.consumer.minReplicas"),
        (PIPELINE, "spec.consumer.lagThreshold", 0, "spec.consumer.lagThreshold"),
        (PIPELINE, "spec.consumer.pollSeconds", 0, "spec.consumer.pollSeconds"),
        (PIPELINE, "spec.consumer.paused", "yes", "spec.consumer.paused"),
        (PIPELINE, "spec.api.replicas", 1000, "spec.api.replicas"),
        (
            PIPELINE,
            "spec.api.resources",
            {"requests": {"cpu": "lots"}},
            "spec.api.resources.requests.cpu",
        ),
        (PIPELINE, "spec.database.secretRef", {"key": "url"}, "spec.database.secretRef.name"),
        (PIPELINE, "spec.sira.zThreshold", 0, "spec.sira.zThreshold"),
        (PIPELINE, "spec.imagePullPolicy", "Sometimes", "spec.imagePullPolicy"),
        (PIPELINE, "spec.views.refreshSchedule", "every ten minutes", "spec.views.refreshSchedule"),
        (PIPELINE, "spec.kafka.securityProtocol", "TLS", "spec.kafka.securityProtocol"),
        (
            PIPELINE,
            "spec.kafka.sasl",
            {"mechanism": "GSSAPI", "secretRef": {"name": "c"}},
            "spec.kafka.sasl.mechanism",
        ),
        (PIPELINE, "spec.kafka.sasl", {"mechanism": "PLAIN"}, "spec.kafka.sasl.secretRef"),
        (
            PIPELINE,
            "spec.kafka.tls",
            {"secretRef": {"name": "t", "caKey": "../ca.crt/"}},
            "spec.kafka.tls.secretRef.caKey",
        ),
    ],
)
def test_invalid_resources_are_refused_naming_the_field(
    namespace: str, sample_file: str, path: str, value: Any, field: str
) -> None:
    doc = _bad(sample(sample_file, namespace), path, value)
    proc = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=false",
        "-f",
        "-",
        stdin=yaml.safe_dump(doc),
        check=False,
    )
    assert proc.returncode != 0
    assert field in proc.stderr, proc.stderr


def test_kafka_security_is_accepted_with_defaults(namespace: str) -> None:
    doc = sample("analyticspipeline.yaml", namespace)
    doc["spec"]["kafka"].update(
        securityProtocol="SASL_SSL",
        sasl={"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-credentials"}},
        tls={"secretRef": {"name": "kafka-tls", "caKey": "ca.crt"}},
    )
    out = kubectl("apply", "--dry-run=server", "-o", "yaml", "-f", "-", stdin=yaml.safe_dump(doc))
    kafka = yaml.safe_load(out.stdout)["spec"]["kafka"]
    assert kafka["sasl"]["secretRef"] == {
        "name": "kafka-credentials",
        "usernameKey": "username",
        "passwordKey": "password",
    }
    assert kafka["tls"] == {"secretRef": {"name": "kafka-tls", "caKey": "ca.crt"}}
    plain = yaml.safe_load(
        kubectl(
            "apply", "--dry-run=server", "-o", "yaml", "-f", "-",
            stdin=yaml.safe_dump(sample("analyticspipeline.yaml", namespace)),
        ).stdout
    )  # fmt: skip
    assert plain["spec"]["kafka"]["securityProtocol"] == "PLAINTEXT"


def test_printer_columns(namespace: str) -> None:
    apply(sample("alertrule.yaml", namespace))
    header = kubectl("get", "ar", "-n", namespace).stdout.splitlines()[0].split()
    assert header[:2] == ["NAME", "STATE"] and "THRESHOLD" in header and header[-1] == "AGE"
    assert "FIRED" in header  # LAST FIRED
    wide = kubectl("get", "ar", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert "SEVERITY" in wide and "LAST EVALUATED" in wide
