"""The AnalyticsPipeline spec read and checked: defaults applied, cross-field rules enforced.

``parse_spec`` turns the custom resource's spec into a typed ``PipelineConfig``; the builders
(manifests.py) and the scaling decision (scaling.py) take that, never the raw mapping. No I/O
here. Defaults repeat the CRD's, so a spec stored before a field existed (the API server only
defaults on write) still parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from molam_workloads.core.settings import uses_sasl, uses_tls

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}


class InvalidSpec(ValueError):
    """The spec passed the CRD's schema but still cannot work (a cross-field rule)."""


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class KafkaSasl:
    mechanism: str
    username: SecretKey
    password: SecretKey


@dataclass(frozen=True)
class KafkaTls:
    """A Secret mounted at KAFKA_TLS_DIR; each key given is one PEM file."""

    secret: str
    ca_key: str | None
    cert_key: str | None
    key_key: str | None

    def refs(self) -> list[SecretKey]:
        keys = (self.ca_key, self.cert_key, self.key_key)
        return [SecretKey(self.secret, k) for k in keys if k]


@dataclass(frozen=True)
class KafkaSecurity:
    """spec.kafka's securityProtocol, sasl and tls (PLAINTEXT: neither)."""

    protocol: str = "PLAINTEXT"
    sasl: KafkaSasl | None = None
    tls: KafkaTls | None = None

    def refs(self) -> list[SecretKey]:
        """The Secret keys the pods (and the lag probe) read, in a stable order."""
        out = [self.sasl.username, self.sasl.password] if self.sasl else []
        return out + (self.tls.refs() if self.tls else [])


@dataclass(frozen=True)
class ConsumerScaling:
    min_replicas: int = 1
    max_replicas: int = 8
    lag_threshold: int = 5000
    poll_seconds: int = 15
    scale_down_stabilization_seconds: int = 300
    target_drain_seconds: int | None = None
    paused: bool = False
    static_membership: bool = False


@dataclass(frozen=True)
class PipelineConfig:
    """An AnalyticsPipeline spec with defaults applied and cross-field rules checked."""

    image: str
    image_pull_policy: str
    service_account: str
    log_level: str
    reporting_currency: str
    bootstrap_servers: str
    topic: str
    consumer_group: str
    anomaly_topic: str
    dlq_topic: str
    database: SecretKey
    db_pool_max: int
    redis: SecretKey
    jwt_secret: SecretKey | None
    webhook_secret: SecretKey | None
    api_replicas: int
    cache_ttl_seconds: int
    alerts_interval_seconds: int
    refresh_schedule: str
    refresh_suspend: bool
    sira_enabled: bool
    sira_z_threshold: float
    ledger_retention_days: int
    scaling: ConsumerScaling
    resources: Mapping[str, Any] = field(default_factory=dict)  # component -> resources
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    alertmanagers: tuple[str, ...] = ()  # ALERTMANAGER_URLS of the alerts evaluator
    webhook_allow: tuple[str, ...] = ()  # ALERT_WEBHOOK_ALLOW (empty: the evaluator's default)


def _secret(ref: Mapping[str, Any] | None, default_key: str) -> SecretKey | None:
    if not ref or not ref.get("secretRef"):
        return None
    sr = ref["secretRef"]
    return SecretKey(name=str(sr["name"]), key=str(sr.get("key") or default_key))


def parse_kafka_security(kafka: Mapping[str, Any]) -> KafkaSecurity:
    """spec.kafka's security fields, with the rules the CRD's schema cannot say."""
    protocol = str(kafka.get("securityProtocol", "PLAINTEXT"))
    sasl_spec, tls_spec = kafka.get("sasl") or {}, kafka.get("tls") or {}
    sasl_on, tls_on = uses_sasl(protocol), uses_tls(protocol)
    sasl = None
    if sasl_on:
        ref = sasl_spec.get("secretRef") or {}
        if not ref.get("name"):
            raise InvalidSpec(
                f"spec.kafka.sasl.secretRef: required with securityProtocol {protocol}"
            )
        sasl = KafkaSasl(
            mechanism=str(sasl_spec.get("mechanism", "PLAIN")),
            username=SecretKey(str(ref["name"]), str(ref.get("usernameKey") or "username")),
            password=SecretKey(str(ref["name"]), str(ref.get("passwordKey") or "password")),
        )
    elif sasl_spec:
        raise InvalidSpec(
            f"spec.kafka.sasl: securityProtocol {protocol} does not use SASL "
            "(SASL_SSL or SASL_PLAINTEXT)"
        )
    tls = None
    if tls_spec and not tls_on:
        raise InvalidSpec(
            f"spec.kafka.tls: securityProtocol {protocol} does not use TLS (SSL or SASL_SSL)"
        )
    if tls_spec:
        ref = tls_spec.get("secretRef") or {}
        if not ref.get("name"):
            raise InvalidSpec("spec.kafka.tls.secretRef.name: required")
        keys = {k: ref.get(k) or None for k in ("caKey", "certKey", "keyKey")}
        if bool(keys["certKey"]) != bool(keys["keyKey"]):
            raise InvalidSpec("spec.kafka.tls.secretRef: certKey and keyKey go together")
        if not any(keys.values()):
            raise InvalidSpec(
                "spec.kafka.tls.secretRef: name caKey, or certKey and keyKey, or all three"
            )
        tls = KafkaTls(
            secret=str(ref["name"]),
            ca_key=keys["caKey"],
            cert_key=keys["certKey"],
            key_key=keys["keyKey"],
        )
    return KafkaSecurity(protocol=protocol, sasl=sasl, tls=tls)


def parse_spec(spec: Mapping[str, Any]) -> PipelineConfig:
    """The spec, defaulted and checked; ``InvalidSpec`` names the field that is wrong."""

    def sect(name: str) -> Mapping[str, Any]:
        return spec.get(name) or {}

    kafka, consumer, api = sect("kafka"), sect("consumer"), sect("api")
    if not spec.get("image"):
        raise InvalidSpec("spec.image: required")
    if not kafka.get("bootstrapServers"):
        raise InvalidSpec("spec.kafka.bootstrapServers: required")
    database, redis = _secret(sect("database"), "url"), _secret(sect("redis"), "url")
    if database is None:
        raise InvalidSpec("spec.database.secretRef: required")
    if redis is None:
        raise InvalidSpec("spec.redis.secretRef: required")
    target = consumer.get("targetDrainSeconds")
    scaling = ConsumerScaling(
        min_replicas=int(consumer.get("minReplicas", 1)),
        max_replicas=int(consumer.get("maxReplicas", 8)),
        lag_threshold=int(consumer.get("lagThreshold", 5000)),
        poll_seconds=int(consumer.get("pollSeconds", 15)),
        scale_down_stabilization_seconds=int(consumer.get("scaleDownStabilizationSeconds", 300)),
        target_drain_seconds=int(target) if target is not None else None,
        paused=bool(consumer.get("paused", False)),
        static_membership=bool(consumer.get("staticMembership", False)),
    )
    if scaling.min_replicas > scaling.max_replicas:
        raise InvalidSpec(
            f"spec.consumer.minReplicas ({scaling.min_replicas}) must not exceed "
            f"spec.consumer.maxReplicas ({scaling.max_replicas})"
        )
    if scaling.lag_threshold < 1 or scaling.poll_seconds < 1:
        raise InvalidSpec("spec.consumer.lagThreshold and pollSeconds must be at least 1")
    return PipelineConfig(
        image=str(spec["image"]),
        image_pull_policy=str(spec.get("imagePullPolicy", "IfNotPresent")),
        service_account=str(spec.get("serviceAccountName", "default")),
        log_level=str(spec.get("logLevel", "INFO")),
        reporting_currency=str(spec.get("reportingCurrency", "USD")),
        bootstrap_servers=str(kafka["bootstrapServers"]),
        topic=str(kafka.get("topic", "wallet.transactions")),
        consumer_group=str(kafka.get("consumerGroup", "analytics-consumer-g")),
        anomaly_topic=str(kafka.get("anomalyTopic", "analytics.anomaly")),
        dlq_topic=str(kafka.get("dlqTopic", "analytics.dlq")),
        database=database,
        db_pool_max=int(sect("database").get("poolMax", 10)),
        redis=redis,
        jwt_secret=_secret(sect("jwtSecret"), "secret"),
        webhook_secret=_secret(sect("alerts").get("webhookSecret"), "secret"),
        api_replicas=int(api.get("replicas", 2)),
        cache_ttl_seconds=int(api.get("cacheTtlSeconds", 30)),
        alerts_interval_seconds=int(sect("alerts").get("intervalSeconds", 60)),
        alertmanagers=tuple(str(u) for u in sect("alerts").get("alertmanagers") or ()),
        webhook_allow=tuple(str(a) for a in sect("alerts").get("webhookAllow") or ()),
        refresh_schedule=str(sect("views").get("refreshSchedule", "*/10 * * * *")),
        refresh_suspend=bool(sect("views").get("suspend", False)),
        sira_enabled=bool(sect("sira").get("enabled", True)),
        sira_z_threshold=float(sect("sira").get("zThreshold", 3)),
        ledger_retention_days=int(consumer.get("ledgerRetentionDays", 0)),
        scaling=scaling,
        kafka_security=parse_kafka_security(kafka),
        resources={
            c: dict(sect(s).get("resources") or DEFAULT_RESOURCES)
            for c, s in (
                ("api", "api"),
                ("consumer", "consumer"),
                ("alerts", "alerts"),
                ("refresh-views", "views"),
            )
        },
    )
