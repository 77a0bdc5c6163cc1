"""Configuration of ``molam-analytics alerts``: the shared pieces plus the evaluator's knobs."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from molam_workloads.alerts.egress import EgressPolicy
from molam_workloads.core.settings import (
    BindAddress,
    DatabaseSettings,
    KafkaSettings,
    ReportingSettings,
)


class AlertsSettings(DatabaseSettings, KafkaSettings, ReportingSettings):
    metrics_port: int = Field(
        default=9103, ge=0, le=65535, description="Prometheus /metrics port (0: not served)."
    )
    metrics_address: BindAddress = Field(
        default="0.0.0.0",
        description="Address the /metrics listener binds (127.0.0.1: this host only; :: IPv6).",
    )
    alerts_interval_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Time between two evaluation cycles."
    )
    # Webhooks (receivers speak Alertmanager's webhook format).
    alert_webhook_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Default HMAC-SHA256 key of webhooks without their own secret: each POST carries "
            "X-Molam-Signature: t=<unix>,v1=<hex HMAC of '<t>.<body>'>."
        ),
    )
    alert_webhook_allow: str = Field(
        default="public",
        description=(
            "Where webhooks and a rule's Alertmanagers may connect, checked on the resolved "
            "addresses: 'public' (globally routable), host names, IPs or CIDRs, comma-separated."
            " Loopback, link-local and private addresses are refused unless listed."
        ),
    )
    # Alertmanager (Prometheus's alert-push protocol, POST /api/v2/alerts).
    alertmanager_urls: str = Field(
        default="",
        description=(
            "Alertmanagers every rule's alerts are pushed to (comma-separated base URLs, e.g. "
            "http://alertmanager.monitoring:9093); their hosts are allowed by name."
        ),
    )
    alertmanager_resend_seconds: float = Field(
        default=60.0,
        gt=0,
        le=60,
        description=(
            "Firing alerts are re-posted this often (Prometheus's resend_delay), so "
            "Alertmanager never resolves them on its own."
        ),
    )
    alertmanager_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    alertmanager_max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts of one post before waiting for the next."
    )
    alertmanager_resolved_resend_minutes: int = Field(
        default=15,
        ge=1,
        le=1440,
        description="Resolved alerts are re-posted this long, so an Alertmanager that was "
        "down when they cleared still learns it (as Prometheus does).",
    )
    alerts_delivery_retention_days: int = Field(
        default=7, ge=1, le=366, description="Delivery-ledger rows older than this are deleted."
    )
    alerts_webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    alerts_webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    alerts_webhook_backoff_base_seconds: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles after each failure."
    )
    alerts_webhook_backoff_cap_seconds: float = Field(
        default=300.0, gt=0, description="Longest delay between two attempts."
    )
    alerts_notify_concurrency: int = Field(
        default=16, ge=1, le=1000, description="Webhook POSTs in flight at once."
    )
    alerts_notify_poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often the notifier looks for due deliveries."
    )
    alerts_external_url: str = Field(
        default="http://analytics-api:8082",
        description="Base URL put in payloads (externalURL, generatorURL).",
    )
    alerts_hourly_split_minutes: int = Field(
        default=180,
        ge=60,
        description=(
            "Windows at least this long read their whole hours from txn_hourly_agg and only "
            "their ragged ends from txn_minute_agg (same sums, far fewer rows)."
        ),
    )
    alerts_work_mem_mb: int = Field(
        default=64, ge=4, le=4096, description="work_mem of the evaluation transaction."
    )
    alerts_receiver: str = Field(default="molam-analytics", min_length=1)
    alerts_stale_ingestion_minutes: float = Field(
        default=10.0,
        ge=0,
        le=1440,
        description=(
            "The ingestion is stale when the consumer group has stored no batch for this long "
            "while its topic has lag: every rule then has no data (NoData). 0: never."
        ),
    )
    # Housekeeping.
    minute_agg_retention_hours: int = Field(
        default=48,
        ge=1,
        le=24 * 31,
        description="txn_minute_agg rows older than this are deleted; longer windows read hours.",
    )
    alerts_resolved_retention_days: int = Field(default=30, ge=1)
    alerts_housekeeping_interval_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("alertmanager_urls")
    @classmethod
    def _am_urls(cls, v: str) -> str:
        for url in (u.strip() for u in v.split(",") if u.strip()):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL")
        return v

    @field_validator("alert_webhook_allow")
    @classmethod
    def _allow(cls, v: str) -> str:
        EgressPolicy.parse(v.split(","))
        return v

    @model_validator(mode="after")
    def _backoff(self) -> AlertsSettings:
        if self.alerts_webhook_backoff_cap_seconds < self.alerts_webhook_backoff_base_seconds:
            raise ValueError("ALERTS_WEBHOOK_BACKOFF_CAP_SECONDS must be >= the base delay")
        return self

    @property
    def webhook_secret(self) -> bytes | None:
        s = self.alert_webhook_secret
        return s.get_secret_value().encode() if s and s.get_secret_value() else None

    @property
    def alertmanagers(self) -> list[str]:
        """The default Alertmanagers' base URLs, without a trailing slash."""
        return [u.strip().rstrip("/") for u in self.alertmanager_urls.split(",") if u.strip()]

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.parse(
            self.alert_webhook_allow.split(","),
            extra_hosts=[urlsplit(u).hostname or "" for u in self.alertmanagers],
        )
