"""Kafka security settings (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*): what is refused,
and the aiokafka keyword arguments ``client_options`` makes of them.

The SASL half is tested as a mapping only: the local broker (Tansu 0.6.0) offers SCRAM only
when started with ``--authentication``, and then refuses the ``tansu user create`` call that
would store a user in its memory storage, so no client can log in to it here. The options are
checked against aiokafka's own constructor, which validates them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from helpers.kafka_tls import TlsFiles

from molam_workloads.core.errors import ConfigError
from molam_workloads.core.kafka import KafkaConnection, client_options
from molam_workloads.core.settings import KafkaSettings, load_settings

BOOT = "kafka-1:9093,kafka-2:9093"


SetEnv = Callable[..., KafkaSettings]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    for var in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CA_FILE",
        "KAFKA_SSL_CERT_FILE",
        "KAFKA_SSL_KEY_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", BOOT)

    def set_env(**values: str) -> KafkaSettings:
        for k, v in values.items():
            monkeypatch.setenv(k, v)
        return load_settings(KafkaSettings)

    return set_env


def test_plaintext_by_default(env: SetEnv) -> None:
    s = env()
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert client_options(s) == {"bootstrap_servers": BOOT, "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram(env: SetEnv, tls_files: TlsFiles) -> None:
    s = env(
        KAFKA_SECURITY_PROTOCOL="sasl_ssl",  # Kafka's capitals, or not
        KAFKA_SASL_MECHANISM="scram-sha-512",
        KAFKA_SASL_USERNAME="analytics",
        KAFKA_SASL_PASSWORD="s3cret",
        KAFKA_SSL_CA_FILE=str(tls_files.ca),
    )
    assert "s3cret" not in repr(s) and "s3cret" not in repr(KafkaConnection.from_settings(s))
    opts = client_options(s)
    context = opts.pop("ssl_context")
    assert opts == {
        "bootstrap_servers": BOOT,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "analytics",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]


def test_sasl_plaintext_sends_no_tls(env: SetEnv) -> None:
    s = env(
        KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD="p",
    )
    opts = client_options(s)
    assert "ssl_context" not in opts
    assert opts["sasl_mechanism"] == "PLAIN"  # Kafka's default mechanism


def test_ssl_with_client_certificate(env: SetEnv, tls_files: TlsFiles) -> None:
    s = env(
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CA_FILE=str(tls_files.ca),
        KAFKA_SSL_CERT_FILE=str(tls_files.client_cert),
        KAFKA_SSL_KEY_FILE=str(tls_files.client_key),
    )
    opts = client_options(s)
    assert set(opts) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert opts["security_protocol"] == "SSL"


def test_ssl_without_a_ca_file_trusts_the_system_cas(env: SetEnv) -> None:
    # Managed services (public CAs) need no CA file.
    opts = client_options(env(KAFKA_SECURITY_PROTOCOL="SSL"))
    assert isinstance(opts["ssl_context"], ssl.SSLContext)


async def test_every_aiokafka_client_accepts_the_options(env: SetEnv, tls_files: TlsFiles) -> None:
    """aiokafka checks these in its constructors (protocol, mechanism, context)."""
    s = env(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        KAFKA_SASL_USERNAME="u",
        KAFKA_SASL_PASSWORD="p",
        KAFKA_SSL_CA_FILE=str(tls_files.ca),
    )
    opts = client_options(s)
    consumer = AIOKafkaConsumer(**opts)
    producer = AIOKafkaProducer(**opts)
    admin = AIOKafkaAdminClient(**opts)
    for client in (consumer._client, producer.client, admin._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert client._ssl_context is opts["ssl_context"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
            "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
            "KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not authenticate with SASL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"},
            "KAFKA_SASL_MECHANISM: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "TLS"},
            "KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or "
            "'SASL_SSL'",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CA_FILE=/nonexistent/ca.pem is not a readable file",
        ),
    ],
)
def test_inconsistent_settings_are_refused_by_name(
    env: SetEnv, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        env(**values)
    assert message in str(info.value)
    assert str(info.value).startswith("bad configuration: ")


def test_client_key_needs_its_certificate(env: SetEnv, tls_files: TlsFiles) -> None:
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together"):
        env(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_KEY_FILE=str(tls_files.client_key))


def test_tls_files_without_tls_are_refused(env: SetEnv, tls_files: TlsFiles) -> None:
    with pytest.raises(
        ConfigError,
        match=r"KAFKA_SSL_CA_FILE set but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS",
    ):
        env(
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            KAFKA_SASL_USERNAME="u",
            KAFKA_SASL_PASSWORD="p",
            KAFKA_SSL_CA_FILE=str(tls_files.ca),
        )


def test_empty_variables_count_as_unset(env: SetEnv) -> None:
    s = env(KAFKA_SSL_CA_FILE="", KAFKA_SASL_USERNAME="")
    assert s.kafka_ssl_ca_file is None and s.kafka_sasl_username is None


def test_a_file_that_is_no_certificate_names_itself(tls_files: TlsFiles, tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    conn = KafkaConnection("k:9093", "SSL", ssl_ca_file=str(bogus))
    with pytest.raises(ConfigError, match=f"cannot load the CA file {bogus}"):
        client_options(conn)
    mismatched = KafkaConnection(
        "k:9093",
        "SSL",
        ssl_ca_file=str(tls_files.ca),
        ssl_cert_file=str(tls_files.client_cert),
        ssl_key_file=str(tls_files.server_key),  # not the certificate's key
    )
    with pytest.raises(ConfigError, match="cannot load the client certificate"):
        client_options(mismatched)
