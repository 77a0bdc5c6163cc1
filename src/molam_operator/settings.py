"""Configuration of ``molam-analytics operator`` (environment, typed)."""

from __future__ import annotations

from functools import cached_property

from pydantic import Field, field_validator

from molam_operator.allowlist import AllowLists, image_prefix, secret_pattern, split
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
    operator_image_allow: str = Field(
        default="",
        description="Registries or repository prefixes a pipeline's spec.image may come from, "
        "comma-separated (ghcr.io/molam,registry.local:5000); empty: any image.",
    )
    operator_secret_allow: str = Field(
        default="",
        description="Secrets the operator may read for a pipeline or an AlertRule: names or "
        "patterns (analytics-*), comma-separated; empty: any Secret its RBAC lets it get.",
    )

    @field_validator("operator_image_allow")
    @classmethod
    def _images(cls, v: str) -> str:
        for entry in split(v):
            image_prefix(entry)
        return v

    @field_validator("operator_secret_allow")
    @classmethod
    def _secrets(cls, v: str) -> str:
        for entry in split(v):
            secret_pattern(entry)
        return v

    @cached_property
    def allow(self) -> AllowLists:
        return AllowLists.parse(self.operator_image_allow, self.operator_secret_allow)
