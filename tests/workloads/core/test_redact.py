"""URLs in logs and messages: scheme, host and port only (``core/redact.py``), and each place
that reports a URL of PostgreSQL, Redis or Kafka uses it (against real closed ports)."""

from __future__ import annotations

import logging
import socket

import pytest

from molam_workloads import cli
from molam_workloads.core.cache import create_redis
from molam_workloads.core.db import connect, create_pool
from molam_workloads.core.errors import ExitCode, ServiceUnavailable
from molam_workloads.core.kafka import group_lag
from molam_workloads.core.redact import UNPARSEABLE, redact_hosts, redact_url, redact_urls_in
from molam_workloads.core.settings import DatabaseSettings, KafkaSettings, RedisSettings

# Every secret-bearing part a URL can have; none may survive redaction.
SECRETS = ("hunter2", "s3cr3t-path", "sig=xyz", "frag")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://cache:6379"),
        ("rediss://user:hunter2@[::1]:6380/2?ssl_cert_reqs=none", "rediss://[::1]:6380"),
        ("postgresql://app:hunter2@db:5432/s3cr3t-path?sslmode=require", "postgresql://db:5432"),
        ("postgresql://app:hun@ter2@db/x", "postgresql://db"),  # an unescaped @ in a password
        ("postgresql://u:hunter2@h1:5432,h2:5433/db", "postgresql://h1:5432,h2:5433"),
        ("postgresql:///db?host=/run/pg&password=hunter2", "postgresql://(local)"),
        ("https://hooks.example/T0/s3cr3t-path?sig=xyz#frag", "https://hooks.example"),
        ("https://tok:hunter2@hooks.example:8443/x", "https://hooks.example:8443"),
        ("kafka-0:9092", "kafka-0:9092"),
        ("user:hunter2@kafka-0:9092/s3cr3t-path", "kafka-0:9092"),
        ("http://[::1/s3cr3t-path", UNPARSEABLE),
        ("", UNPARSEABLE),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert not any(s in redact_url(url) for s in SECRETS)


def test_redact_hosts_and_free_text() -> None:
    assert redact_hosts("a:9092, u:hunter2@b:9093,") == "a:9092,b:9093"
    text = "POST 'https://hooks.example/s3cr3t-path?sig=xyz' failed; redis://:hunter2@r:1/0 too"
    assert redact_urls_in(text) == "POST 'https://hooks.example' failed; redis://r:1 too"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_clean(*texts: str) -> None:
    joined = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in joined, joined


async def test_postgresql_unreachable_names_host_only(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    dsn = f"postgresql://app:hunter2@127.0.0.1:{port}/s3cr3t-path?sig=xyz"
    with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as one:
        await connect(dsn)
    with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as pool:
        async with create_pool(DatabaseSettings(database_url=dsn)):
            pass
    for exc in (one.value, pool.value):
        assert f"postgresql://127.0.0.1:{port}" in str(exc)
    _assert_clean(str(one.value), str(pool.value), caplog.text)


async def test_redis_unreachable_names_host_only(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    settings = RedisSettings(redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as exc:
        async with create_redis(settings):
            pass
    assert f"redis://127.0.0.1:{port}" in str(exc.value)
    _assert_clean(str(exc.value), caplog.text)


async def test_kafka_unreachable_names_hosts_only(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    settings = KafkaSettings(kafka_bootstrap_servers=f"127.0.0.1:{port}")
    with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as exc:
        await group_lag(settings, "g", "t", timeout=3)
    assert f"Kafka at 127.0.0.1:{port}" in str(exc.value)
    _assert_clean(str(exc.value), caplog.text)


@pytest.mark.parametrize("command", ["migrate", "api"])
def test_the_command_line_prints_no_password(
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The one-line error of a command that cannot reach PostgreSQL (what a pod's log shows)."""
    port = _closed_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:hunter2@127.0.0.1:{port}/s3cr3t-path")
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("ANALYTICS_JWT_SECRET", "k" * 40)
    with caplog.at_level(logging.DEBUG):
        assert cli.main([command]) == ExitCode.UNAVAILABLE
    out, err = capsys.readouterr()
    assert f"postgresql://127.0.0.1:{port} is unreachable" in err
    _assert_clean(out, err, caplog.text)
