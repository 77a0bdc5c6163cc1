"""``molam-analytics consume`` over TLS for real: its consumer group, and the producer that sends
dead letters, connect with KAFKA_SECURITY_PROTOCOL=SSL to a broker reachable only through a TLS
proxy that requires a client certificate (``tests/helpers/kafka_tls.py``)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer
from helpers.ingest import counted, make_events, wait_until
from helpers.kafka_tls import TlsBroker, TlsFiles, create_topics, tls_env

from molam_workloads.core.events import encode_event
from molam_workloads.core.kafka import CLIENT_ID, KafkaConnection, client_options, producer

CLI = str(Path(sys.executable).with_name("molam-analytics"))


async def test_consume_counts_and_dead_letters_over_tls(
    tls_kafka: TlsBroker, tls_files: TlsFiles, db: asyncpg.Connection, database_url: str,
    redis_url: str,
) -> None:  # fmt: skip
    suffix = uuid.uuid4().hex[:8]
    topic, dlq, group = f"wallet.{suffix}", f"dlq.{suffix}", f"g-{suffix}"
    kafka = KafkaConnection(
        tls_kafka.bootstrap, "SSL", ssl_ca_file=str(tls_files.ca),
        ssl_cert_file=str(tls_files.client_cert), ssl_key_file=str(tls_files.client_key),
    )  # fmt: skip
    await create_topics(client_options(kafka), (topic, 2), (dlq, 1))
    events = make_events(30, seed=71)
    async with producer(kafka) as prod:
        for value in [encode_event(e) for e in events] + [b"not json"]:
            await prod.send_and_wait(topic, value)

    env = os.environ | tls_env(tls_kafka, tls_files) | {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "KAFKA_TOPIC": topic, "KAFKA_CONSUMER_GROUP": group, "DLQ_TOPIC": dlq,
        "ANOMALY_TOPIC": f"anomaly.{suffix}", "SIRA_ENABLED": "false", "METRICS_PORT": "0",
    }  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        CLI, "consume", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        await wait_until(lambda: _at(db, len(events)), timeout=60)
        letters = AIOKafkaConsumer(
            dlq, client_id=CLIENT_ID, auto_offset_reset="earliest", **client_options(kafka)
        )
        await letters.start()
        try:
            record = await asyncio.wait_for(letters.getone(), 30)
        finally:
            await letters.stop()
        assert b'"reason":"not_json"' in (record.value or b"").replace(b" ", b"")
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    assert proc.returncode in (0, -15), out.decode()
    # Bootstrap and broker connections of every client went through the proxy's TLS.
    assert tls_kafka.proxy.handshakes >= 4


async def _at(db: asyncpg.Connection, n: int) -> bool:
    return await counted(db) == n
