"""Configuration of ``molam-analytics alerts``: the shared pieces plus the evaluator's knobs."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from molam_workloads.core.settings import DatabaseSettings, ReportingSettings


class AlertsSettings(DatabaseSettings, ReportingSettings):
    metrics_port: int = Field(
        default=9103, ge=0, le=65535, description="Prometheus /metrics port (0: not served)."
    )
    alerts_interval_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Time between two evaluation cycles."
    )
    # Webhooks (receivers speak Alertmanager's webhook format).
    alert_webhook_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key: each POST carries X-Molam-Signature: sha256=<hex of body>.",
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
    # Housekeeping.
    minute_agg_retention_hours: int = Field(
        default=48,
        ge=1,
        le=24 * 31,
        description="txn_minute_agg rows older than this are deleted; longer windows read hours.",
    )
    alerts_resolved_retention_days: int = Field(default=30, ge=1)
    alerts_housekeeping_interval_seconds: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _backoff(self) -> AlertsSettings:
        if self.alerts_webhook_backoff_cap_seconds < self.alerts_webhook_backoff_base_seconds:
            raise ValueError("ALERTS_WEBHOOK_BACKOFF_CAP_SECONDS must be >= the base delay")
        return self

    @property
    def webhook_secret(self) -> bytes | None:
        s = self.alert_webhook_secret
        return s.get_secret_value().encode() if s and s.get_secret_value() else None
