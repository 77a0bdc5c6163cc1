"""Configuration of ``molam-analytics api``: the shared pieces plus the API's own knobs."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from molam_workloads.core.settings import (
    DatabaseSettings,
    KafkaSettings,
    RedisSettings,
    ReportingSettings,
)


class ApiSettings(DatabaseSettings, RedisSettings, KafkaSettings, ReportingSettings):
    analytics_jwt_secret: SecretStr = Field(
        description="HS256 key that signs the bearer tokens (at least 32 characters).",
    )
    api_port: int = Field(default=8082, ge=1, le=65535, description="Port `api` listens on.")
    api_host: str = Field(default="0.0.0.0", description="Address `api` binds.")
    cache_ttl_seconds: int = Field(
        default=30, ge=0, le=86400, description="TTL of cached summary answers (0: no cache)."
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed by CORS; empty (the default): no CORS.",
    )
    api_max_range_days: int = Field(
        default=400, ge=1, le=3660, description="Longest time range a query may ask for."
    )

    @field_validator("analytics_jwt_secret")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (HS256 wants a 256-bit key)")
        return v

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
