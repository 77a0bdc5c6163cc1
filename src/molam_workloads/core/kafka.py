"""Kafka clients and the consumer-group lag probe shared by the `lag` command and the operator.

Every aiokafka client of the project is built from :func:`client_options`: where the brokers
are and how to talk to them (TLS, SASL). Lag is measured the way ``kafka-consumer-groups
--describe`` does it: ListOffsets (latest) for the end of each partition and OffsetFetch for the
group's committed offsets.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from molam_workloads.core.errors import ConfigError, MolamError, ServiceUnavailable
from molam_workloads.core.redact import redact_hosts
from molam_workloads.core.settings import KafkaSettings, uses_sasl, uses_tls

CLIENT_ID = "molam-analytics"
log = logging.getLogger(__name__)


class TopicNotFound(MolamError):
    """The topic does not exist (or has no partitions) on the cluster."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to talk to them: the one input of :func:`client_options`.

    The workloads make it from their settings (:meth:`from_settings`, checked there); the
    operator from an AnalyticsPipeline's spec and the Secrets it names.
    """

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_file: str | None = None  # None: the system's trusted CAs
    ssl_cert_file: str | None = None  # client certificate, with ssl_key_file
    ssl_key_file: str | None = None

    @property
    def tls(self) -> bool:
        return uses_tls(self.security_protocol)

    @property
    def sasl(self) -> bool:
        return uses_sasl(self.security_protocol)

    @classmethod
    def from_settings(cls, s: KafkaSettings) -> KafkaConnection:
        return cls(
            bootstrap_servers=s.kafka_bootstrap_servers,
            security_protocol=s.kafka_security_protocol,
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_username=s.kafka_sasl_username,
            sasl_password=(
                s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None
            ),
            ssl_ca_file=s.kafka_ssl_ca_file,
            ssl_cert_file=s.kafka_ssl_cert_file,
            ssl_key_file=s.kafka_ssl_key_file,
        )


def tls_context(conn: KafkaConnection) -> ssl.SSLContext:
    """The client's TLS context (aiokafka's helper: certificates and host names verified)."""
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=conn.ssl_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"Kafka TLS: cannot load the CA file {conn.ssl_ca_file}: {exc}") from None
    if conn.ssl_cert_file or conn.ssl_key_file:
        try:
            context.load_cert_chain(conn.ssl_cert_file or "", conn.ssl_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"Kafka TLS: cannot load the client certificate {conn.ssl_cert_file} with the key "
                f"{conn.ssl_key_file}: {exc}"
            ) from None
    return context


def client_options(kafka: KafkaConnection | KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (consumer, producer, admin): the brokers'
    address and the security settings, nothing else. Loading a certificate that cannot be
    read raises ConfigError (naming the file)."""
    conn = KafkaConnection.from_settings(kafka) if isinstance(kafka, KafkaSettings) else kafka
    options: dict[str, Any] = {
        "bootstrap_servers": conn.bootstrap_servers,
        "security_protocol": conn.security_protocol,
    }
    if conn.tls:
        options["ssl_context"] = tls_context(conn)
    if conn.sasl:
        # aiokafka takes the SCRAM credentials under the sasl_plain_* names too.
        options.update(
            sasl_mechanism=conn.sasl_mechanism,
            sasl_plain_username=conn.sasl_username,
            sasl_plain_password=conn.sasl_password,
        )
    return options


def bootstrap_addresses(options: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(host, port) of each bootstrap server in ``options`` (:func:`client_options`)."""
    out = []
    for hostport in str(options["bootstrap_servers"]).split(","):
        host, _, port = hostport.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


async def tls_failure(options: Mapping[str, Any], timeout: float = 5.0) -> str | None:
    """Why a TLS handshake with the first bootstrap server fails (``options`` from
    :func:`client_options`), or None: no TLS, a handshake that succeeds, or a refused
    connection (which aiokafka's own error says well).

    aiokafka reports a refused certificate as "Unable to bootstrap" and only logs the reason;
    this asks the handshake itself, so the error a user sees says what is wrong.
    """
    context = options.get("ssl_context")
    if context is None:
        return None
    host, port = bootstrap_addresses(options)[0]
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), timeout
        )
    except ssl.SSLError as exc:
        return f"TLS handshake with {host}:{port} failed: {exc}"
    except TimeoutError:
        # A plaintext listener waits for the rest of a "request" that is a TLS ClientHello.
        return (
            f"no TLS handshake with {host}:{port} within {timeout:g} s "
            "(a listener that does not speak TLS, or no answer at all)"
        )
    except OSError:
        return None
    writer.close()
    return None


async def unreachable(options: Mapping[str, Any], exc: BaseException) -> ServiceUnavailable:
    """The error for clients that could not reach the brokers, with the TLS reason if any."""
    detail = await tls_failure(options) or str(exc) or repr(exc)
    return ServiceUnavailable(
        f"Kafka at {redact_hosts(str(options['bootstrap_servers']))} is unreachable: {detail}"
    )


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end_offset: int
    committed: int | None  # None: the group never committed on this partition

    @property
    def lag(self) -> int:
        # A partition the group never committed on lags by everything it holds (as if it would
        # start from the beginning, which is what our consumer does: auto_offset_reset=earliest).
        return max(self.end_offset - (self.committed or 0), 0)


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def has_commits(self) -> bool:
        return any(p.committed is not None for p in self.partitions)


@asynccontextmanager
async def producer(
    kafka: KafkaConnection | KafkaSettings | str, **kwargs: object
) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped on exit (idempotent: retries never duplicate a record).

    ``kafka``: the settings (or connection) to connect with; a bare bootstrap address connects
    in PLAINTEXT (tests and benchmarks against the local broker). A broker that refuses
    InitProducerId (Tansu answers UnknownError) gets a plain producer with ``acks="all"``
    instead: still durable, but a retry may publish a record twice.
    """
    options = client_options(KafkaConnection(kafka) if isinstance(kafka, str) else kafka)
    prod = AIOKafkaProducer(client_id=CLIENT_ID, enable_idempotence=True, **options, **kwargs)
    try:
        await prod.start()
    except KafkaConnectionError as exc:
        await prod.stop()
        raise await unreachable(options, exc) from None
    except KafkaError as exc:
        await prod.stop()
        log.warning("broker refused an idempotent producer (%r): using acks=all", exc)
        prod = AIOKafkaProducer(client_id=CLIENT_ID, acks="all", **options, **kwargs)
        try:
            await prod.start()
        except KafkaError as exc2:
            await prod.stop()
            raise await unreachable(options, exc2) from None
    try:
        yield prod
    finally:
        await prod.stop()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    # topics() refreshes the cluster metadata without subscribing or creating anything.
    ids = consumer.partitions_for_topic(topic) if topic in await consumer.topics() else None
    if not ids:
        raise TopicNotFound(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, p) for p in sorted(ids)]


async def measure_lag(
    consumer: AIOKafkaConsumer,
    admin: AIOKafkaAdminClient,
    group: str,
    parts: list[TopicPartition],
) -> GroupLag:
    """ListOffsets (latest) and OffsetFetch for ``parts`` (one topic) with started clients."""
    ends = await consumer.end_offsets(parts)
    # Explicit partitions: some brokers drop the connection when asked for all.
    committed = await admin.list_consumer_group_offsets(group, partitions=parts)
    rows = []
    for tp in parts:
        meta = committed.get(tp)
        off = meta.offset if meta is not None and meta.offset >= 0 else None
        rows.append(PartitionLag(tp.topic, tp.partition, ends[tp], off))
    return GroupLag(group, parts[0].topic if parts else "", tuple(rows))


async def group_lag(
    kafka: KafkaConnection | KafkaSettings, group: str, topic: str, *, timeout: float = 10.0
) -> GroupLag:
    """End offset, committed offset and lag of every partition of ``topic`` for ``group``."""
    options = client_options(kafka)

    async def probe() -> GroupLag:
        consumer = AIOKafkaConsumer(client_id=CLIENT_ID, enable_auto_commit=False, **options)
        admin = AIOKafkaAdminClient(client_id=CLIENT_ID, **options)
        try:
            await consumer.start()
            await admin.start()
            parts = await topic_partitions(consumer, topic)
            return await measure_lag(consumer, admin, group, parts)
        finally:
            await consumer.stop()
            await admin.close()

    try:
        return await asyncio.wait_for(probe(), timeout)
    except (KafkaConnectionError, TimeoutError) as exc:
        raise await unreachable(options, exc) from None
    except KafkaError as exc:
        where = redact_hosts(str(options["bootstrap_servers"]))
        raise ServiceUnavailable(f"Kafka at {where} answered with an error: {exc!r}") from None
