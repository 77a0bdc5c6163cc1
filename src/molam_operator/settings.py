"""Configuration of ``molam-analytics operator`` (environment, typed)."""

from __future__ import annotations

from pydantic import Field

from molam_workloads.core.settings import BindAddress, DatabaseSettings

# Names every child carries; also the filters of the child watches in main.py.
GROUP = "analytics.molam.io"
VERSION = "v1"
MANAGED_BY = "molam-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_NAME = "app.kubernetes.io/name"
# On an AlertRule: which AnalyticsPipeline's database holds it when the namespace has several.
LABEL_RULE_PIPELINE = f"{GROUP}/pipeline"


class OperatorSettings(DatabaseSettings):
    """DATABASE_URL here is the fallback for AlertRules in namespaces without a pipeline."""

    operator_database_fallback: bool = Field(
        default=True,
        description="Use the operator's own DATABASE_URL for AlertRules when the namespace has "
        "no AnalyticsPipeline (false: such rules get a Synced=False condition).",
    )
    operator_metrics_port: int = Field(
        default=9104, ge=0, le=65535, description="Prometheus /metrics port (0: not served)."
    )
    operator_metrics_address: BindAddress = Field(
        default="0.0.0.0",
        description="Address the /metrics listener binds (127.0.0.1: this host only; :: IPv6).",
    )
    operator_resync_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Safety-net re-check of every pipeline's children (drift is normally "
        "repaired at once, from the child watches).",
    )
    operator_kafka_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Longest wait for one lag probe."
    )
