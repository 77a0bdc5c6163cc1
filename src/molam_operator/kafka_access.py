"""How the operator's own lag probe reaches a pipeline's Kafka: spec.kafka plus the values of
the Secrets it names, read through the Kubernetes API (the operator mounts no pipeline Secret).

The pods get the same settings as environment variables and files (manifests.py); here they
become a :class:`KafkaAccess`, and for the moment clients are built, a core
:class:`~molam_workloads.core.kafka.KafkaConnection` whose PEM files live in a private temporary
directory: Python's ``ssl`` loads a client certificate only from files. The TLS context holds
what it loaded, so the files are gone as soon as the clients are built.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from molam_operator.spec import KafkaSecurity, SecretKey
from molam_workloads.core.kafka import KafkaConnection


class KafkaSecretMissing(Exception):
    """A Secret (or a key of it) that spec.kafka names does not exist."""


@dataclass(frozen=True)
class KafkaAccess:
    """Everything a Kafka client of one pipeline needs; equal accesses share clients."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)


def resolve(
    bootstrap_servers: str,
    security: KafkaSecurity,
    values: Mapping[SecretKey, str | None],
) -> KafkaAccess:
    """The access from the spec's security and the Secret values it names (``values``, None:
    missing). Raises :class:`KafkaSecretMissing` naming the first missing one."""

    def value(ref: SecretKey | None) -> str | None:
        if ref is None:
            return None
        got = values.get(ref)
        if got is None:
            raise KafkaSecretMissing(f"Secret {ref.name!r} has no key {ref.key!r}")
        return got

    sasl, tls = security.sasl, security.tls

    def tls_ref(key: str | None) -> SecretKey | None:
        return SecretKey(tls.secret, key) if tls is not None and key else None

    return KafkaAccess(
        bootstrap_servers=bootstrap_servers,
        security_protocol=security.protocol,
        sasl_mechanism=sasl.mechanism if sasl else "PLAIN",
        sasl_username=value(sasl.username if sasl else None),
        sasl_password=value(sasl.password if sasl else None),
        ca_pem=value(tls_ref(tls.ca_key if tls else None)),
        cert_pem=value(tls_ref(tls.cert_key if tls else None)),
        key_pem=value(tls_ref(tls.key_key if tls else None)),
    )


@contextmanager
def connection(access: KafkaAccess) -> Iterator[KafkaConnection]:
    """The core's connection for ``access``; its PEM files exist only inside the block."""
    with tempfile.TemporaryDirectory(prefix="molam-kafka-") as tmp:  # mode 0700

        def write(name: str, pem: str | None) -> str | None:
            if pem is None:
                return None
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pem)
            return path

        yield KafkaConnection(
            bootstrap_servers=access.bootstrap_servers,
            security_protocol=access.security_protocol,
            sasl_mechanism=access.sasl_mechanism,
            sasl_username=access.sasl_username,
            sasl_password=access.sasl_password,
            ssl_ca_file=write("ca.pem", access.ca_pem),
            ssl_cert_file=write("cert.pem", access.cert_pem),
            ssl_key_file=write("key.pem", access.key_pem),
        )
