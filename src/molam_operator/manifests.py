"""Pure builders of an AnalyticsPipeline's children: the parsed spec in, manifest dicts out.

They take the ``PipelineConfig`` of spec.py (defaults applied, rules checked). No I/O here:
everything is unit-tested without a cluster. Owner references and namespaces are added by
``kopf.adopt`` in pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from molam_operator.settings import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
)
from molam_operator.spec import (
    DEFAULT_RESOURCES,
    ConsumerScaling,
    KafkaSecurity,
    PipelineConfig,
    SecretKey,
)

API_PORT = 8082
CONSUMER_METRICS_PORT = 9102
ALERTS_METRICS_PORT = 9103
RUN_AS = 10001  # the image's non-root user
CHECKSUM_ANNOTATION = "analytics.molam.io/config-checksum"
# Last spec.api.replicas written to the API Deployment: replicas are applied when the spec's
# value changes, so a `kubectl scale deployment NAME-api` (runbook) holds until then.
API_REPLICAS_ANNOTATION = "analytics.molam.io/spec-replicas"
# Last replica count the scaler wrote to the consumer: a different live value was set by hand.
SCALED_REPLICAS_ANNOTATION = "analytics.molam.io/scaled-replicas"

# Where the pods find the Kafka TLS Secret's files (KAFKA_SSL_*_FILE point inside).
KAFKA_TLS_DIR = "/etc/molam/kafka-tls"
KAFKA_TLS_VOLUME = "kafka-tls"
# The workloads whose settings include Kafka's (they connect, or check the broker is up; the
# alerts evaluator asks the topic's lag when no batch came for a while: a stale ingestion).
KAFKA_COMPONENTS = ("api", "consumer", "alerts")

Component = Literal["api", "consumer", "alerts"]
COMPONENTS: tuple[Component, ...] = ("api", "consumer", "alerts")

# ------------------------------------------------------------------------------------ names


# Every child's name: <pipeline>-<component> (analytics-api, analytics-config, ...).
CHILD_NAME_TEMPLATE = "{pipeline}-{component}"


def child_name(pipeline: str, component: str) -> str:
    return CHILD_NAME_TEMPLATE.format(pipeline=pipeline, component=component)


def config_map_name(pipeline: str) -> str:
    return child_name(pipeline, "config")


def component_of(child: Mapping[str, Any]) -> str | None:
    """Which part of its pipeline a child is: its component label (never its name, which a
    pipeline's own name may resemble: the API of pipeline ``consumer-x`` is ``consumer-x-api``)."""
    return ((child.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT)


def selector_labels(pipeline: str, component: str) -> dict[str, str]:
    """The (immutable) Deployment selector: never add to it."""
    return {
        LABEL_NAME: "molam-analytics",
        LABEL_INSTANCE: pipeline,
        LABEL_COMPONENT: component,
    }


def labels(pipeline: str, component: str) -> dict[str, str]:
    return {**selector_labels(pipeline, component), LABEL_MANAGED_BY: MANAGED_BY}


def children_selector(pipeline: str) -> str:
    """The label selector of every child of the pipeline (never another pipeline's or Helm's)."""
    chosen = {LABEL_NAME: "molam-analytics", LABEL_INSTANCE: pipeline, LABEL_MANAGED_BY: MANAGED_BY}
    return ",".join(f"{k}={v}" for k, v in chosen.items())


def api_selector(pipeline: str) -> str:
    """The API pods' selector as a string (the scale subresource's labelSelectorPath)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(pipeline, "api").items())


# ----------------------------------------------------------------------------------- config


def build_config_map(pipeline: str, cfg: PipelineConfig) -> dict[str, Any]:
    """The non-secret environment shared by every workload (docs/configuration.md names)."""
    data = {
        "KAFKA_BOOTSTRAP_SERVERS": cfg.bootstrap_servers,
        "KAFKA_TOPIC": cfg.topic,
        "KAFKA_CONSUMER_GROUP": cfg.consumer_group,
        "ANOMALY_TOPIC": cfg.anomaly_topic,
        "DLQ_TOPIC": cfg.dlq_topic,
        "SIRA_ENABLED": "true" if cfg.sira_enabled else "false",
        "SIRA_Z_THRESHOLD": _num(cfg.sira_z_threshold),
        "LEDGER_RETENTION_DAYS": str(cfg.ledger_retention_days),
        "API_PORT": str(API_PORT),
        "CACHE_TTL_SECONDS": str(cfg.cache_ttl_seconds),
        "REPORTING_CURRENCY": cfg.reporting_currency,
        "DB_POOL_MAX": str(cfg.db_pool_max),
        "ALERTS_INTERVAL_SECONDS": str(cfg.alerts_interval_seconds),
        "LOG_LEVEL": cfg.log_level,
        **_kafka_security_config(cfg.kafka_security),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name(pipeline), "labels": labels(pipeline, "config")},
        "data": data,
    }


def _kafka_security_config(sec: KafkaSecurity) -> dict[str, str]:
    """The non-secret KAFKA_* security settings; none at all for PLAINTEXT, so a pipeline
    without security keeps the ConfigMap (and the pods' checksum) it always had."""
    if sec.protocol == "PLAINTEXT":
        return {}
    data = {"KAFKA_SECURITY_PROTOCOL": sec.protocol}
    if sec.sasl:
        data["KAFKA_SASL_MECHANISM"] = sec.sasl.mechanism
    if sec.tls:
        for var, key in (
            ("KAFKA_SSL_CA_FILE", sec.tls.ca_key),
            ("KAFKA_SSL_CERT_FILE", sec.tls.cert_key),
            ("KAFKA_SSL_KEY_FILE", sec.tls.key_key),
        ):
            if key:
                data[var] = f"{KAFKA_TLS_DIR}/{key}"
    return data


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def secret_refs(cfg: PipelineConfig) -> list[SecretKey]:
    """The Secret keys the pods' environment reads."""
    refs = [r for r in (cfg.database, cfg.redis, cfg.jwt_secret, cfg.webhook_secret) if r]
    return refs + cfg.kafka_security.refs()


def secrets_digest(values: Mapping[tuple[str, str], str | None]) -> str:
    """A digest of the referenced Secret values, {(secret, key): value} (None: missing).

    Only digests leave the operator's memory: a value is hashed on its own, then with its key.
    """
    doc = sorted(
        [name, key, None if v is None else hashlib.sha256(v.encode()).hexdigest()]
        for (name, key), v in values.items()
    )
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def config_checksum(config_map: Mapping[str, Any], cfg: PipelineConfig, secrets: str = "") -> str:
    """Changes whenever the pods' environment would: it rolls them (pod template annotation).

    Covers the ConfigMap's data, which Secret keys are referenced and ``secrets``, the digest of
    their values (``secrets_digest``): pods read Secrets only when they start, so a rotated
    password reaches them by a rollout.
    """
    refs = [cfg.database, cfg.redis, cfg.jwt_secret, cfg.webhook_secret]
    refs += cfg.kafka_security.refs()  # none without Kafka security: checksums stay as they were
    doc = {
        "data": config_map.get("data", {}),
        "secrets": [[r.name, r.key] if r else None for r in refs],
        "values": secrets,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _secret_env(var: str, ref: SecretKey) -> dict[str, Any]:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _env(cfg: PipelineConfig, component: str) -> list[dict[str, Any]]:
    env = [_secret_env("DATABASE_URL", cfg.database)]
    if component in ("api", "consumer"):
        env.append(_secret_env("REDIS_URL", cfg.redis))
    if component == "api" and cfg.jwt_secret is not None:
        env.append(_secret_env("ANALYTICS_JWT_SECRET", cfg.jwt_secret))
    if component == "consumer":
        env.append({"name": "METRICS_PORT", "value": str(CONSUMER_METRICS_PORT)})
        # The pod's name turns on static group membership: a restarted container rejoins
        # without a rebalance (docs/decisions/023-static-membership.md). Opt-in: a broker that
        # never evicts a static member (Tansu 0.6) stalls the group at the next scale-down.
        if cfg.scaling.static_membership:
            field = {"fieldRef": {"fieldPath": "metadata.name"}}
            env.append({"name": "POD_NAME", "valueFrom": field})
    if component == "alerts":
        env.append({"name": "METRICS_PORT", "value": str(ALERTS_METRICS_PORT)})
        if cfg.webhook_secret is not None:
            env.append(_secret_env("ALERT_WEBHOOK_SECRET", cfg.webhook_secret))
        if cfg.alertmanagers:
            env.append({"name": "ALERTMANAGER_URLS", "value": ",".join(cfg.alertmanagers)})
        if cfg.webhook_allow:
            env.append({"name": "ALERT_WEBHOOK_ALLOW", "value": ",".join(cfg.webhook_allow)})
    sasl = cfg.kafka_security.sasl
    if component in KAFKA_COMPONENTS and sasl is not None:
        env.append(_secret_env("KAFKA_SASL_USERNAME", sasl.username))
        env.append(_secret_env("KAFKA_SASL_PASSWORD", sasl.password))
    return env


# ---------------------------------------------------------------------------------- workloads

CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_ARGS: dict[str, list[str]] = {
    "api": ["api", "--port", str(API_PORT)],
    "consumer": ["consume"],
    "alerts": ["alerts"],
    "refresh-views": ["refresh-views"],
}


def _http_probe(path: str, port: int | str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def _probes(component: str) -> dict[str, Any]:
    if component == "api":
        return {
            # /ready answers 503 while PostgreSQL, the one service an answer needs, is down: take
            # the pod out of the Service then, but do not restart it for someone else's outage.
            "readinessProbe": _http_probe("/ready", "http", period=10, failures=3),
            "livenessProbe": {
                "tcpSocket": {"port": "http"},
                "initialDelaySeconds": 10,
                "periodSeconds": 20,
                "timeoutSeconds": 3,
                "failureThreshold": 3,
                "successThreshold": 1,
            },
        }
    # consumer, alerts: the metrics endpoint answers while the process's loop is alive.
    probe = _http_probe("/metrics", "metrics", period=20, failures=3)
    return {"readinessProbe": dict(probe), "livenessProbe": {**probe, "initialDelaySeconds": 15}}


def _container(cfg: PipelineConfig, pipeline: str, component: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": component,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["molam-analytics"],
        "args": list(_ARGS[component]),
        "envFrom": [{"configMapRef": {"name": config_map_name(pipeline)}}],
        "env": _env(cfg, component),
        "resources": _resources(cfg.resources.get(component)),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *_kafka_tls_mounts(cfg, component)],
    }
    if component == "api":
        container["ports"] = [{"name": "http", "containerPort": API_PORT, "protocol": "TCP"}]
    elif component in ("consumer", "alerts"):
        port = CONSUMER_METRICS_PORT if component == "consumer" else ALERTS_METRICS_PORT
        container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    if component != "refresh-views":
        container.update(_probes(component))
    return container


def _kafka_tls_mounts(cfg: PipelineConfig, component: str) -> list[dict[str, Any]]:
    if cfg.kafka_security.tls is None or component not in KAFKA_COMPONENTS:
        return []
    return [{"name": KAFKA_TLS_VOLUME, "mountPath": KAFKA_TLS_DIR, "readOnly": True}]


def _kafka_tls_volumes(cfg: PipelineConfig, component: str) -> list[dict[str, Any]]:
    tls = cfg.kafka_security.tls
    if tls is None or component not in KAFKA_COMPONENTS:
        return []
    # 0440 and the pod's fsGroup: readable by the workload's user only.
    secret = {"secretName": tls.secret, "defaultMode": 0o440}
    return [{"name": KAFKA_TLS_VOLUME, "secret": secret}]


def _resources(res: Mapping[str, Any] | None) -> dict[str, Any]:
    res = res or DEFAULT_RESOURCES
    return {k: {q: str(v) for q, v in res[k].items()} for k in ("requests", "limits") if k in res}


def _migrate_container(cfg: PipelineConfig, pipeline: str) -> dict[str, Any]:
    """Schema first: every pod applies pending migrations before its workload starts.

    ``migrate`` is idempotent and serialises itself with an advisory lock, so the pods of a
    rollout may all run it at once; the first applies, the others find nothing to do.
    """
    return {
        "name": "migrate",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["molam-analytics"],
        "args": ["migrate"],
        "envFrom": [{"configMapRef": {"name": config_map_name(pipeline)}}],
        "env": [_secret_env("DATABASE_URL", cfg.database)],
        "resources": _resources(None),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _pod_spec(cfg: PipelineConfig, pipeline: str, component: str) -> dict[str, Any]:
    return {
        "serviceAccountName": cfg.service_account,
        "automountServiceAccountToken": False,  # the workloads never call the Kubernetes API
        "securityContext": POD_SECURITY,
        "terminationGracePeriodSeconds": 30,
        "initContainers": [_migrate_container(cfg, pipeline)],
        "containers": [_container(cfg, pipeline, component)],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            *_kafka_tls_volumes(cfg, component),
        ],
    }


def _scrape_annotations(component: Component) -> dict[str, str]:
    """Where a Prometheus without the Operator's PodMonitor finds the pod's /metrics."""
    port = {"api": API_PORT, "consumer": CONSUMER_METRICS_PORT, "alerts": ALERTS_METRICS_PORT}
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port[component]),
        "prometheus.io/path": "/metrics",
    }


def build_deployment(
    pipeline: str,
    component: Component,
    cfg: PipelineConfig,
    *,
    checksum: str,
    replicas: int | None,
) -> dict[str, Any]:
    """``<pipeline>-<component>``; ``replicas=None`` leaves the live count alone (patches)."""
    meta_annotations: dict[str, str] = {}
    if component == "api":
        meta_annotations[API_REPLICAS_ANNOTATION] = str(cfg.api_replicas)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(pipeline, component)},
        "revisionHistoryLimit": 5,
        "strategy": (
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
            if component == "api"
            # One evaluator at a time; consumers rebalance the group either way.
            else {"type": "Recreate"}
            if component == "alerts"
            else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}
        ),
        "template": {
            "metadata": {
                "labels": labels(pipeline, component),
                "annotations": {CHECKSUM_ANNOTATION: checksum, **_scrape_annotations(component)},
            },
            "spec": _pod_spec(cfg, pipeline, component),
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(pipeline, component),
            "labels": labels(pipeline, component),
            "annotations": meta_annotations,
        },
        "spec": spec,
    }


def build_service(pipeline: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": child_name(pipeline, "api"), "labels": labels(pipeline, "api")},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(pipeline, "api"),
            "ports": [{"name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_cron_job(
    pipeline: str, cfg: PipelineConfig, *, checksum: str, api_version: str
) -> dict[str, Any]:
    """``<pipeline>-refresh-views``; ``api_version`` is batch/v1 or batch/v1beta1 (same shape)."""
    pod = _pod_spec(cfg, pipeline, "refresh-views")
    pod["restartPolicy"] = "OnFailure"
    return {
        "apiVersion": api_version,
        "kind": "CronJob",
        "metadata": {
            "name": child_name(pipeline, "refresh-views"),
            "labels": labels(pipeline, "refresh-views"),
        },
        "spec": {
            "schedule": cfg.refresh_schedule,
            "suspend": cfg.refresh_suspend,
            # REFRESH ... CONCURRENTLY takes an exclusive lock against itself: never overlap.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels(pipeline, "refresh-views")},
                "spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 1800,
                    "template": {
                        "metadata": {
                            "labels": labels(pipeline, "refresh-views"),
                            "annotations": {CHECKSUM_ANNOTATION: checksum},
                        },
                        "spec": pod,
                    },
                },
            },
        },
    }


def initial_consumer_replicas(scaling: ConsumerScaling) -> int:
    return 0 if scaling.paused else scaling.min_replicas


def build_children(
    pipeline: str,
    cfg: PipelineConfig,
    *,
    cron_job_api_version: str,
    secrets: str = "",
) -> list[dict[str, Any]]:
    """Every child, in creation order (config first, so pods never start without it).

    Replicas: the API's from the spec, the consumer's initial count (its later replicas belong
    to the scaler, see pipeline.py). ``secrets``: the digest of the Secret values the pods read
    (``secrets_digest``); when it changes, the pods roll.
    """
    cm = build_config_map(pipeline, cfg)
    checksum = config_checksum(cm, cfg, secrets)
    return [
        cm,
        build_deployment(pipeline, "api", cfg, checksum=checksum, replicas=cfg.api_replicas),
        build_deployment(
            pipeline,
            "consumer",
            cfg,
            checksum=checksum,
            replicas=initial_consumer_replicas(cfg.scaling),
        ),
        build_deployment(pipeline, "alerts", cfg, checksum=checksum, replicas=1),
        build_service(pipeline),
        build_cron_job(pipeline, cfg, checksum=checksum, api_version=cron_job_api_version),
    ]
