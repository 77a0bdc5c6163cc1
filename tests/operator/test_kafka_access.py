"""The operator's own Kafka access: spec.kafka plus Secret values, turned into the core's
client options; and the lag probe measuring over TLS for real (a Tansu broker behind a TLS
proxy that requires a client certificate, tests/helpers/kafka_tls.py)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from helpers.kafka_tls import TlsBroker, TlsFiles, create_topics

from molam_operator import kafka_access
from molam_operator.kafka_access import KafkaAccess, KafkaSecretMissing, resolve
from molam_operator.lagprobe import LagProber
from molam_operator.scaling import LagObservation, ProbeFailure
from molam_operator.spec import SecretKey, parse_kafka_security
from molam_workloads.core.kafka import client_options, producer

SASL_SSL = {
    "securityProtocol": "SASL_SSL",
    "sasl": {"mechanism": "SCRAM-SHA-256", "secretRef": {"name": "creds"}},
    "tls": {"secretRef": {"name": "tls", "caKey": "ca.crt"}},
}


def test_resolve_takes_the_named_secret_values() -> None:
    security = parse_kafka_security(SASL_SSL)
    values = {
        SecretKey("creds", "username"): "analytics",
        SecretKey("creds", "password"): "s3cret",
        SecretKey("tls", "ca.crt"): "-----BEGIN CERTIFICATE-----\n",
    }
    access = resolve("k:9093", security, values)
    assert access == KafkaAccess(
        "k:9093",
        "SASL_SSL",
        "SCRAM-SHA-256",
        "analytics",
        "s3cret",
        ca_pem="-----BEGIN CERTIFICATE-----\n",
    )
    assert "s3cret" not in repr(access) and "BEGIN" not in repr(access)
    with pytest.raises(KafkaSecretMissing, match="Secret 'creds' has no key 'password'"):
        resolve("k:9093", security, {**values, SecretKey("creds", "password"): None})


def test_plaintext_needs_no_secret() -> None:
    assert resolve("k:9092", parse_kafka_security({}), {}) == KafkaAccess("k:9092")


def test_pem_files_exist_privately_and_only_inside_the_block() -> None:
    access = KafkaAccess("k:9093", "SSL", ca_pem="CA", cert_pem="CERT", key_pem="KEY")
    with kafka_access.connection(access) as conn:
        assert conn.ssl_ca_file and conn.ssl_cert_file and conn.ssl_key_file
        folder = Path(conn.ssl_key_file).parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(os.stat(conn.ssl_key_file).st_mode) == 0o600
        assert Path(conn.ssl_cert_file).read_text() == "CERT"
    assert not folder.exists()


# ------------------------------------------------------------------------------- for real


def _access(tls_kafka: TlsBroker, files: TlsFiles, ca: Path) -> KafkaAccess:
    return KafkaAccess(
        tls_kafka.bootstrap,
        "SSL",
        ca_pem=ca.read_text(),
        cert_pem=files.client_cert.read_text(),
        key_pem=files.client_key.read_text(),
    )


async def test_lag_probe_over_tls_with_secret_pems(
    tls_kafka: TlsBroker, tls_files: TlsFiles
) -> None:
    access = _access(tls_kafka, tls_files, tls_files.ca)
    topic, group = f"tls.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    with kafka_access.connection(access) as conn:
        options = client_options(conn)
        await create_topics(options, (topic, 1))
        async with producer(conn) as prod:
            for i in range(3):  # one record per batch (Tansu's end offsets, LOCAL-STACK.md)
                await prod.send_and_wait(topic, b"%d" % i)
    consumer = AIOKafkaConsumer(
        topic, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest", **options
    )
    await consumer.start()
    try:
        got = 0
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=500, max_records=1)
            got += sum(len(rs) for rs in batch.values())
            if got:
                break
        await consumer.commit()
    finally:
        await consumer.stop()

    prober = LagProber()
    try:
        observation, message = await prober.probe(access, group, topic, timeout=10)
        assert isinstance(observation, LagObservation), message
        assert (observation.committed, observation.end_offsets) == (got, 3)
        assert observation.lag == 3 - got

        wrong = _access(tls_kafka, tls_files, tls_files.other_ca)
        failure, message = await prober.probe(wrong, group, topic, timeout=10)
        assert failure is ProbeFailure.broker_unreachable
        assert "certificate verify failed" in message, message
    finally:
        await prober.close()


async def test_a_pem_that_is_no_certificate_is_reported(tls_kafka: TlsBroker) -> None:
    prober = LagProber()
    try:
        bad = KafkaAccess(tls_kafka.bootstrap, "SSL", ca_pem="not a certificate")
        failure, message = await prober.probe(bad, "g", "t", timeout=5)
    finally:
        await prober.close()
    assert failure is ProbeFailure.kafka_secret_invalid
    assert "cannot load the CA file" in message
