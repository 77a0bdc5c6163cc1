"""Typed configuration read from the environment (listed in docs/configuration.md).

Each component composes the pieces it needs into its own settings class; the environment
variable names are the contract and never change. ``get_settings(cls)`` caches one instance per
class so tests can override by clearing the cache.
"""

from __future__ import annotations

import ipaddress
import os
from functools import cache
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from molam_workloads.core.currencies import CURRENCIES
from molam_workloads.core.errors import ConfigError


def _ip_address(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError: not an IPv4 or IPv6 address
    return value


# An address a listener binds: 0.0.0.0 (every IPv4 interface), :: (IPv6), 127.0.0.1, a pod IP.
BindAddress = Annotated[str, AfterValidator(_ip_address)]


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


class DatabaseSettings(_Base):
    # URLs carry passwords: out of repr, so a logged settings object shows none (core.redact
    # renders one for a message).
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        description="PostgreSQL DSN (postgresql://user:pass@host:port/db or ?host=/socket/dir).",
        repr=False,
    )
    db_pool_max: int = Field(default=10, ge=1, le=500, description="Max connections per process.")

    @field_validator("database_url")
    @classmethod
    def _postgres_dsn(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (e.g. postgresql://user@host:5432/db)")
        return v


class RedisSettings(_Base):
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis URL.", repr=False)

    @field_validator("redis_url")
    @classmethod
    def _redis_dsn(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// (e.g. redis://127.0.0.1:6379/0)")
        return v


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


def uses_tls(protocol: str) -> bool:
    """Whether Kafka's ``security.protocol`` encrypts (SSL, SASL_SSL)."""
    return protocol in ("SSL", "SASL_SSL")


def uses_sasl(protocol: str) -> bool:
    """Whether Kafka's ``security.protocol`` authenticates with SASL."""
    return protocol in ("SASL_PLAINTEXT", "SASL_SSL")


# What aiokafka can do with a username and password; GSSAPI and OAUTHBEARER need more than that.
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(_Base):
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092")
    kafka_topic: str = Field(default="wallet.transactions", min_length=1)
    kafka_consumer_group: str = Field(default="analytics-consumer-g", min_length=1)
    anomaly_topic: str = Field(default="analytics.anomaly", min_length=1)
    dlq_topic: str = Field(default="analytics.dlq", min_length=1)

    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default="PLAINTEXT", description="How clients talk to the brokers (TLS and/or SASL)."
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        default="PLAIN", description="SASL mechanism (with a SASL_* security protocol)."
    )
    kafka_sasl_username: str | None = Field(default=None, min_length=1)
    kafka_sasl_password: SecretStr | None = Field(default=None)
    kafka_ssl_ca_file: str | None = Field(
        default=None,
        description="PEM CA bundle the brokers' certificates are checked against "
        "(unset: the system's trusted CAs).",
    )
    kafka_ssl_cert_file: str | None = Field(default=None, description="PEM client certificate.")
    kafka_ssl_key_file: str | None = Field(default=None, description="PEM client private key.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _hosts(cls, v: str) -> str:
        hosts = [h.strip() for h in v.split(",") if h.strip()]
        if not hosts or any(":" not in h for h in hosts):
            raise ValueError("must be host:port[,host:port...]")
        return ",".join(hosts)

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        # Kafka's own configuration spells these in capitals; accept sasl_ssl as well.
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator(
        "kafka_sasl_username",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # A chart or a shell often exports the variable empty rather than not at all.
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _consistent_security(self) -> KafkaSettings:
        """Refuse combinations that would connect differently from what was meant."""
        protocol = self.kafka_security_protocol
        sasl, tls = uses_sasl(protocol), uses_tls(protocol)
        if sasl and (not self.kafka_sasl_username or self.kafka_sasl_password is None):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password is not None):
            raise ValueError(
                f"KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD are set but KAFKA_SECURITY_PROTOCOL="
                f"{protocol} does not authenticate with SASL (use SASL_SSL or SASL_PLAINTEXT)"
            )
        files = {
            "KAFKA_SSL_CA_FILE": self.kafka_ssl_ca_file,
            "KAFKA_SSL_CERT_FILE": self.kafka_ssl_cert_file,
            "KAFKA_SSL_KEY_FILE": self.kafka_ssl_key_file,
        }
        given = [name for name, value in files.items() if value]
        if given and not tls:
            raise ValueError(
                f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                "(use SSL or SASL_SSL)"
            )
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together (client TLS)")
        for name in given:
            path = files[name]
            assert path is not None
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise ValueError(f"{name}={path} is not a readable file")
        return self


class ReportingSettings(_Base):
    reporting_currency: str = Field(default="USD")

    @field_validator("reporting_currency")
    @classmethod
    def _iso(cls, v: str) -> str:
        v = v.upper()
        if v not in CURRENCIES:
            raise ValueError(f"{v!r} is not an ISO 4217 currency code")
        return v


class SiraSettings(_Base):
    sira_enabled: bool = Field(default=True)
    sira_z_threshold: float = Field(default=3.0, gt=0, le=100)
    # Detector knobs (ingest/sira.py documents them).
    sira_bucket_minutes: int = Field(default=15, ge=1, le=60, description="Judged bucket size.")
    sira_grace_seconds: int = Field(
        default=120, ge=0, le=3600, description="Wait past a bucket's end before judging it."
    )
    sira_min_history: int = Field(default=12, ge=2, description="Buckets seen before judging.")
    sira_seasonal: bool = Field(default=True, description="Hour-of-week baselines.")
    sira_horizon_hours: int = Field(
        default=48, ge=1, description="Buckets older than this (minute data gone) are skipped."
    )
    sira_baseline_ttl_days: int = Field(default=35, ge=1)

    @field_validator("sira_bucket_minutes")
    @classmethod
    def _divides_hour(cls, v: int) -> int:
        if 60 % v:
            raise ValueError("must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60)")
        return v


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment, turning validation errors into one readable line."""
    try:
        return cls()
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper()
            # A rule across fields (a model validator) names its variables in its message.
            parts.append(
                f"{name}: {err['msg']}" if name else err["msg"].removeprefix("Value error, ")
            )
        raise ConfigError("bad configuration: " + "; ".join(parts)) from None


@cache
def get_settings(cls: type[S]) -> S:
    """One cached settings object per class; ``get_settings.cache_clear()`` in tests."""
    return load_settings(cls)
