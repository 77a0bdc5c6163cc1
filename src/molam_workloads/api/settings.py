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
    analytics_jwt_previous_secrets: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated HS256 keys that still verify tokens but sign none: the "
        "keys being rotated out (each at least 32 characters). Empty: none.",
    )
    analytics_jwt_max_lifetime_seconds: int = Field(
        default=30 * 86400,
        ge=60,
        le=366 * 86400,
        description="Longest a token may live: exp - iat (exp - now without iat) above it is "
        "refused.",
    )
    analytics_jwt_issuer: str | None = Field(
        default=None, min_length=1, description="Required `iss` claim (unset: not checked)."
    )
    analytics_jwt_audience: str | None = Field(
        default=None,
        min_length=1,
        description="Required `aud` claim (unset: tokens that carry an `aud` are refused).",
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

    @field_validator("analytics_jwt_previous_secrets")
    @classmethod
    def _each_long_enough(cls, v: SecretStr) -> SecretStr:
        if any(len(k) < 32 for k in _split(v.get_secret_value())):
            raise ValueError("each key must be at least 32 characters (HS256 wants 256 bits)")
        return v

    @field_validator("analytics_jwt_issuer", "analytics_jwt_audience", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # A chart or a shell often exports the variable empty rather than not at all.
        return None if isinstance(v, str) and not v.strip() else v

    @property
    def jwt_keys(self) -> tuple[str, ...]:
        """The keys tokens verify with: the current one (which signs new tokens) first."""
        current = self.analytics_jwt_secret.get_secret_value()
        previous = _split(self.analytics_jwt_previous_secrets.get_secret_value())
        return (current, *(k for k in previous if k != current))

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


def _split(keys: str) -> list[str]:
    return [k.strip() for k in keys.split(",") if k.strip()]
