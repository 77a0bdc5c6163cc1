"""Kafka over TLS for real: a Tansu broker reachable only through a TLS proxy that advertises
itself (tests/helpers/kafka_tls.py), so the bootstrap connection and every broker connection
are TLS.

The producer, a consumer, the admin client, and the ``simulate`` and ``lag`` commands connect
with KAFKA_SECURITY_PROTOCOL=SSL, the test CA and a client certificate the proxy requires;
with a CA that did not sign the broker's certificate they fail, saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from helpers.kafka_tls import TlsBroker, TlsFiles, create_topics, tls_env

from molam_workloads.core.errors import ExitCode, ServiceUnavailable
from molam_workloads.core.kafka import CLIENT_ID, client_options, group_lag, producer
from molam_workloads.core.settings import KafkaSettings, get_settings, load_settings

CLI = [sys.executable, "-c", "from molam_workloads.cli import main; raise SystemExit(main())"]


@pytest.fixture
def settings_for(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def make(env: dict[str, str]) -> KafkaSettings:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        return load_settings(KafkaSettings)

    yield make
    get_settings.cache_clear()


async def _command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_produce_consume_and_lag_over_tls(
    tls_kafka: TlsBroker,
    tls_files: TlsFiles,
    settings_for,  # type: ignore[no-untyped-def]
) -> None:
    topic, group = f"tls.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    settings = settings_for(tls_env(tls_kafka, tls_files))
    await create_topics(client_options(settings), (topic, 1))

    async with producer(settings) as prod:
        await prod.send_and_wait(topic, b'{"hello": "tls"}', key=b"k")

    consumer = AIOKafkaConsumer(
        topic,
        client_id=CLIENT_ID,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        **client_options(settings),
    )
    await consumer.start()
    try:
        records: list[bytes] = []
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=500)
            records += [r.value for rs in batch.values() for r in rs if r.value is not None]
            if records:
                break
        assert records == [b'{"hello": "tls"}']
        await consumer.commit()
    finally:
        await consumer.stop()

    lag = await group_lag(settings, group, topic)
    assert [(p.end_offset, p.committed) for p in lag.partitions] == [(1, 1)]

    # The commands, as a user runs them, with the same environment.
    env = {**tls_env(tls_kafka, tls_files), "KAFKA_TOPIC": topic, "KAFKA_CONSUMER_GROUP": group}
    sim = await _command("simulate", "--count", "3", "--rate", "0", "--seed", "7", env=env)
    assert sim.returncode == 0, sim.stderr
    assert f"to {topic}" in sim.stdout
    out = await _command("lag", "--json", env=env)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["partitions"]
    # (Tansu counts a batch of several records as one in its end offset: LOCAL-STACK.md.)
    assert row["current_offset"] == 1 and row["log_end_offset"] > 1

    # Bootstrap and broker connections both came through the proxy (the broker advertises only it).
    assert tls_kafka.proxy.handshakes >= 2


async def test_a_wrong_ca_fails_with_the_tls_reason(
    tls_kafka: TlsBroker,
    tls_files: TlsFiles,
    settings_for,  # type: ignore[no-untyped-def]
) -> None:
    env = tls_env(tls_kafka, tls_files, ca=str(tls_files.other_ca))
    settings = settings_for(env)
    with pytest.raises(ServiceUnavailable) as info:
        async with producer(settings):
            pass
    message = str(info.value)
    assert message.startswith(f"Kafka at {tls_kafka.bootstrap} is unreachable: TLS handshake")
    assert "certificate verify failed" in message

    # Library log lines aside (aiokafka logs the refusal too): the contract is the CLI's line.
    out = await _command("lag", env={**env, "LOG_LEVEL": "CRITICAL"})
    assert out.returncode == ExitCode.UNAVAILABLE
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("molam-analytics lag: error: Kafka at ")
    assert "certificate verify failed" in line


async def test_plaintext_to_a_tls_listener_is_refused(
    tls_kafka: TlsBroker,
    settings_for,  # type: ignore[no-untyped-def]
) -> None:
    settings = settings_for(
        {
            "KAFKA_BOOTSTRAP_SERVERS": tls_kafka.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "KAFKA_SSL_CA_FILE": "",
            "KAFKA_SSL_CERT_FILE": "",
            "KAFKA_SSL_KEY_FILE": "",
        }
    )
    with pytest.raises(ServiceUnavailable, match="is unreachable"):
        await group_lag(settings, "g", "t", timeout=5)
