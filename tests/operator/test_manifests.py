"""The pure manifest builders: no cluster, just dicts."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

import pytest
from helpers import samples

from molam_operator import manifests
from molam_operator.manifests import build_children
from molam_operator.spec import KafkaSecurity, parse_spec


def sample_spec() -> dict[str, Any]:
    return samples.sample_spec(samples.PIPELINE)


def children(spec: dict[str, Any] | None = None, api: str = "batch/v1") -> dict[str, Any]:
    cfg = parse_spec(spec or sample_spec())
    return {
        f"{c['kind']}/{c['metadata']['name']}": c
        for c in build_children("analytics", cfg, cron_job_api_version=api)
    }


def container(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_children_have_the_runbook_names() -> None:
    assert sorted(children()) == [
        "ConfigMap/analytics-config",
        "CronJob/analytics-refresh-views",
        "Deployment/analytics-alerts",
        "Deployment/analytics-api",
        "Deployment/analytics-consumer",
        "Service/analytics-api",
    ]


def test_config_map_carries_the_spec_environment() -> None:
    data = children()["ConfigMap/analytics-config"]["data"]
    assert data["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert data["KAFKA_TOPIC"] == "wallet.transactions"
    assert data["KAFKA_CONSUMER_GROUP"] == "analytics-consumer-g"
    assert data["SIRA_ENABLED"] == "true"
    assert data["SIRA_Z_THRESHOLD"] == "3"
    assert data["LEDGER_RETENTION_DAYS"] == "0"
    assert data["API_PORT"] == "8082"
    assert data["ALERTS_INTERVAL_SECONDS"] == "60"
    assert all(isinstance(v, str) for v in data.values())


@pytest.mark.parametrize(
    ("component", "args", "secrets"),
    [
        ("api", ["api", "--port", "8082"], {"DATABASE_URL", "REDIS_URL", "ANALYTICS_JWT_SECRET"}),
        ("consumer", ["consume"], {"DATABASE_URL", "REDIS_URL"}),
        ("alerts", ["alerts"], {"DATABASE_URL"}),
    ],
)
def test_deployment_container(component: str, args: list[str], secrets: set[str]) -> None:
    dep = children()[f"Deployment/analytics-{component}"]
    c = container(dep)
    assert c["image"] == "molam-analytics:latest"
    assert c["command"] == ["molam-analytics"]
    assert c["args"] == args
    env = env_of(c)
    assert {k for k, v in env.items() if isinstance(v, dict) and "secretKeyRef" in v} == secrets
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "analytics-db", "key": "url"}}
    assert c["envFrom"] == [{"configMapRef": {"name": "analytics-config"}}]
    assert c["readinessProbe"] and c["livenessProbe"]
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # The selector is a subset of the pod labels, and never includes mutable labels.
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert "app.kubernetes.io/managed-by" not in sel


def test_api_probes_readiness_and_service_port() -> None:
    ch = children()
    c = container(ch["Deployment/analytics-api"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["ports"] == [{"name": "http", "containerPort": 8082, "protocol": "TCP"}]
    svc = ch["Service/analytics-api"]
    assert svc["spec"]["ports"][0]["port"] == 8082
    assert (
        svc["spec"]["selector"] == ch["Deployment/analytics-api"]["spec"]["selector"]["matchLabels"]
    )


def test_consumer_and_alerts_probe_their_metrics_port() -> None:
    ch = children()
    for comp, port in (("consumer", 9102), ("alerts", 9103)):
        c = container(ch[f"Deployment/analytics-{comp}"])
        assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
        assert c["ports"][0]["containerPort"] == port
        assert env_of(c)["METRICS_PORT"] == str(port)


@pytest.mark.parametrize("static", [False, True])
def test_static_membership_gives_only_the_consumer_its_pod_name(static: bool) -> None:
    spec = sample_spec()
    spec["consumer"] = {**spec.get("consumer", {}), "staticMembership": static}
    ch = children(spec)
    for comp in ("api", "consumer", "alerts"):
        env = env_of(container(ch[f"Deployment/analytics-{comp}"]))
        if comp == "consumer" and static:
            assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        else:
            assert "POD_NAME" not in env
    assert "POD_NAME" not in env_of(container(children()["Deployment/analytics-consumer"]))


def test_replicas() -> None:
    ch = children()
    assert ch["Deployment/analytics-api"]["spec"]["replicas"] == 2
    assert ch["Deployment/analytics-alerts"]["spec"]["replicas"] == 1
    assert ch["Deployment/analytics-consumer"]["spec"]["replicas"] == 1
    spec = sample_spec()
    spec["consumer"] = {**spec["consumer"], "paused": True}
    assert children(spec)["Deployment/analytics-consumer"]["spec"]["replicas"] == 0


@pytest.mark.parametrize("api", ["batch/v1", "batch/v1beta1"])
def test_cron_job(api: str) -> None:
    cj = children(api=api)["CronJob/analytics-refresh-views"]
    assert cj["apiVersion"] == api
    assert cj["spec"]["schedule"] == "*/10 * * * *"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    c = container(cj)
    assert c["args"] == ["refresh-views"]
    assert "livenessProbe" not in c
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"


def test_config_change_changes_the_checksum_on_every_pod_template() -> None:
    def checksums(spec: dict[str, Any]) -> set[str]:
        out = set()
        for obj in children(spec).values():
            if obj["kind"] == "Deployment":
                out.add(
                    obj["spec"]["template"]["metadata"]["annotations"][
                        manifests.CHECKSUM_ANNOTATION
                    ]
                )
        return out

    before = checksums(sample_spec())
    assert len(before) == 1
    changed = sample_spec()
    changed["sira"] = {"enabled": True, "zThreshold": 4}
    after = checksums(changed)
    assert len(after) == 1 and after != before
    # Replicas are not configuration: no roll.
    scaled = sample_spec()
    scaled["api"] = {"replicas": 5}
    assert checksums(scaled) == before


def test_builders_are_pure() -> None:
    spec = sample_spec()
    frozen = copy.deepcopy(spec)
    assert children(spec) == children(spec)
    assert spec == frozen


def test_jwt_secret_only_for_the_api() -> None:
    spec = sample_spec()
    spec["jwtSecret"] = {"secretRef": {"name": "jwt"}}
    ch = children(spec)
    assert env_of(container(ch["Deployment/analytics-api"]))["ANALYTICS_JWT_SECRET"] == {
        "secretKeyRef": {"name": "jwt", "key": "secret"}
    }
    assert "ANALYTICS_JWT_SECRET" not in env_of(container(ch["Deployment/analytics-consumer"]))


def test_every_workload_migrates_the_schema_before_it_starts() -> None:
    ch = children(sample_spec())
    for name in (
        "Deployment/analytics-api",
        "Deployment/analytics-consumer",
        "Deployment/analytics-alerts",
    ):
        (init,) = ch[name]["spec"]["template"]["spec"]["initContainers"]
        assert init["args"] == ["migrate"] and init["image"] == "molam-analytics:latest"
        assert env_of(init)["DATABASE_URL"] == {
            "secretKeyRef": {"name": "analytics-db", "key": "url"}
        }
        assert init["securityContext"]["runAsNonRoot"] is True


def test_webhook_secret_only_for_the_alerts_evaluator() -> None:
    spec = sample_spec()
    assert "ALERT_WEBHOOK_SECRET" not in env_of(
        container(children(spec)["Deployment/analytics-alerts"])
    )
    spec["alerts"] = {"intervalSeconds": 30, "webhookSecret": {"secretRef": {"name": "hooks"}}}
    ch = children(spec)
    assert env_of(container(ch["Deployment/analytics-alerts"]))["ALERT_WEBHOOK_SECRET"] == {
        "secretKeyRef": {"name": "hooks", "key": "secret"}
    }
    assert "ALERT_WEBHOOK_SECRET" not in env_of(container(ch["Deployment/analytics-api"]))


def test_alertmanagers_and_the_allow_list_reach_only_the_alerts_evaluator() -> None:
    spec = sample_spec()
    alerts = container(children(spec)["Deployment/analytics-alerts"])
    assert "ALERTMANAGER_URLS" not in env_of(alerts)
    assert "ALERT_WEBHOOK_ALLOW" not in env_of(alerts)  # the evaluator's default: public
    spec["alerts"] = {
        "alertmanagers": ["http://am-0.monitoring:9093", "http://am-1:9093"],
        "webhookAllow": ["public", "10.20.0.0/16", "hooks.internal"],
    }
    ch = children(spec)
    env = env_of(container(ch["Deployment/analytics-alerts"]))
    assert env["ALERTMANAGER_URLS"] == "http://am-0.monitoring:9093,http://am-1:9093"
    assert env["ALERT_WEBHOOK_ALLOW"] == "public,10.20.0.0/16,hooks.internal"
    for other in ("api", "consumer"):
        other_env = env_of(container(ch[f"Deployment/analytics-{other}"]))
        assert "ALERTMANAGER_URLS" not in other_env and "ALERT_WEBHOOK_ALLOW" not in other_env


def test_a_rotated_secret_value_changes_every_pod_template_and_nothing_else() -> None:
    cfg = parse_spec(sample_spec())
    refs = manifests.secret_refs(cfg)
    assert {(r.name, r.key) for r in refs} >= {(cfg.database.name, cfg.database.key)}
    values: dict[tuple[str, str], str | None] = {(r.name, r.key): "v1" for r in refs}
    digest = manifests.secrets_digest(values)
    assert manifests.secrets_digest(dict(reversed(list(values.items())))) == digest  # no order
    rotated = manifests.secrets_digest({**values, (cfg.database.name, cfg.database.key): "v2"})
    missing = manifests.secrets_digest({**values, (cfg.database.name, cfg.database.key): None})
    assert len({digest, rotated, missing}) == 3
    assert "v1" not in digest

    def build(secrets: str) -> dict[str, Any]:
        return {
            f"{c['kind']}/{c['metadata']['name']}": c
            for c in build_children(
                "analytics", cfg, cron_job_api_version="batch/v1", secrets=secrets
            )
        }

    before, after = build(digest), build(rotated)
    templates = [k for k in before if k.split("/")[0] in ("Deployment", "CronJob")]
    assert len(templates) == 4
    for key in before:
        if key in templates:
            assert before[key] != after[key], key
            before[key] = after[key] = None
        assert before[key] == after[key], key  # only the checksum annotation moved


# ------------------------------------------------------------------------- kafka security

SASL_SSL = {
    "bootstrapServers": "kafka-1:9093",
    "securityProtocol": "SASL_SSL",
    "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-credentials"}},
    "tls": {
        "secretRef": {
            "name": "kafka-tls",
            "caKey": "ca.crt",
            "certKey": "tls.crt",
            "keyKey": "tls.key",
        }
    },
}


def secured(kafka: dict[str, Any]) -> dict[str, Any]:
    return {**sample_spec(), "kafka": kafka}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def test_plaintext_adds_no_kafka_security_anywhere() -> None:
    ch = children()
    assert not [k for k in ch["ConfigMap/analytics-config"]["data"] if "SASL" in k or "SSL" in k]
    for key, obj in ch.items():
        if obj["kind"] in ("Deployment", "CronJob"):
            assert [v["name"] for v in pod_spec(obj)["volumes"]] == ["tmp"], key
            assert not [e for e in env_of(container(obj)) if e.startswith("KAFKA_")], key


def test_sasl_ssl_reaches_the_pods_that_talk_to_kafka() -> None:
    ch = children(secured(SASL_SSL))
    data = ch["ConfigMap/analytics-config"]["data"]
    assert {k: v for k, v in data.items() if k.startswith("KAFKA_S")} == {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SSL_CA_FILE": "/etc/molam/kafka-tls/ca.crt",
        "KAFKA_SSL_CERT_FILE": "/etc/molam/kafka-tls/tls.crt",
        "KAFKA_SSL_KEY_FILE": "/etc/molam/kafka-tls/tls.key",
    }
    for component in ("api", "consumer", "alerts"):
        obj = ch[f"Deployment/analytics-{component}"]
        env = env_of(container(obj))
        assert env["KAFKA_SASL_USERNAME"] == {
            "secretKeyRef": {"name": "kafka-credentials", "key": "username"}
        }
        assert env["KAFKA_SASL_PASSWORD"] == {
            "secretKeyRef": {"name": "kafka-credentials", "key": "password"}
        }
        assert {"name": "kafka-tls", "mountPath": "/etc/molam/kafka-tls", "readOnly": True} in (
            container(obj)["volumeMounts"]
        )
        assert {
            "name": "kafka-tls",
            "secret": {"secretName": "kafka-tls", "defaultMode": 0o440},
        } in (pod_spec(obj)["volumes"])
        # The init container migrates the schema only: no Kafka credentials, no mount.
        init = pod_spec(obj)["initContainers"][0]
        assert [e["name"] for e in init["env"]] == ["DATABASE_URL"]
        assert [m["name"] for m in init["volumeMounts"]] == ["tmp"]
    refresh = ch["CronJob/analytics-refresh-views"]
    assert "KAFKA_SASL_PASSWORD" not in env_of(container(refresh))
    assert [v["name"] for v in pod_spec(refresh)["volumes"]] == ["tmp"]


def test_kafka_secrets_are_digested_and_named_in_the_checksum() -> None:
    cfg = parse_spec(secured(SASL_SSL))
    kafka_refs = {(r.name, r.key) for r in cfg.kafka_security.refs()}
    assert kafka_refs == {
        ("kafka-credentials", "username"),
        ("kafka-credentials", "password"),
        ("kafka-tls", "ca.crt"),
        ("kafka-tls", "tls.crt"),
        ("kafka-tls", "tls.key"),
    }
    assert kafka_refs <= {(r.name, r.key) for r in manifests.secret_refs(cfg)}
    cm = manifests.build_config_map("analytics", cfg)
    other_key = parse_spec(
        secured({**SASL_SSL, "sasl": {**SASL_SSL["sasl"], "secretRef": {"name": "other"}}})
    )
    assert manifests.config_checksum(cm, cfg) != manifests.config_checksum(cm, other_key)


def test_plaintext_checksum_is_what_it_was_before_kafka_security() -> None:
    # Upgrading the operator must not roll the pods of pipelines that do not use it.
    cfg = parse_spec(sample_spec())
    cm = manifests.build_config_map("analytics", cfg)
    assert manifests.config_checksum(cm, cfg, "d") == manifests.config_checksum(
        cm, dataclasses.replace(cfg, kafka_security=KafkaSecurity()), "d"
    )
    doc = {
        "data": cm["data"],
        "secrets": [
            [r.name, r.key] if r else None
            for r in (cfg.database, cfg.redis, cfg.jwt_secret, cfg.webhook_secret)
        ],
        "values": "d",
    }
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    assert manifests.config_checksum(cm, cfg, "d") == expected


def test_ssl_with_a_ca_only_and_sasl_defaults() -> None:
    cfg = parse_spec(
        secured(
            {
                "bootstrapServers": "k:9093",
                "securityProtocol": "SSL",
                "tls": {"secretRef": {"name": "ca", "caKey": "ca.crt"}},
            }
        )
    )
    data = manifests.build_config_map("analytics", cfg)["data"]
    assert data["KAFKA_SSL_CA_FILE"] == "/etc/molam/kafka-tls/ca.crt"
    assert "KAFKA_SSL_CERT_FILE" not in data and "KAFKA_SASL_MECHANISM" not in data
    sasl = parse_spec(
        secured(
            {
                "bootstrapServers": "k:9092",
                "securityProtocol": "SASL_PLAINTEXT",
                "sasl": {"secretRef": {"name": "creds"}},
            }
        )
    ).kafka_security.sasl
    assert sasl is not None and sasl.mechanism == "PLAIN"
    assert (sasl.username.key, sasl.password.key) == ("username", "password")
