"""Fixtures shared by every test: real PostgreSQL, Redis and Kafka from the local stack.

The services come from the environment (``make test`` sources ``.stack/env``). Each test gets
its own database (cloned from a migrated template), its own Redis database number flushed
before use, and its own Kafka topic names, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from helpers.database import database_of, own_redis_url, scratch_database
from helpers.kafka_tls import TlsBroker, TlsFiles, make_tls_files, tls_broker
from redis.asyncio import Redis

from molam_workloads.core.db import migrate
from molam_workloads.core.settings import get_settings


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the tests with 'make test' (it starts the stack)", 2)
    return value


# What a marker's tests need from the stack: missing, the run stops before any test (never a
# skip, so a half-started stack cannot pass). Collecting alone (`--co`) needs nothing.
_MARKER_NEEDS = {"kube": "KUBECONFIG", "node": "NODE_IP", "cluster": "NODE_IP"}


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    # Where no node can run (not root, or STACK_NODE=0) the stack has none: those tests skip.
    no_node = os.environ.get("STACK_NODE") == "0" or os.geteuid() != 0
    for item in session.items:
        for marker, name in _MARKER_NEEDS.items():
            if not item.get_closest_marker(marker) or os.environ.get(name):
                continue
            if name == "NODE_IP" and no_node:
                reason = "no node: STACK_NODE=0 or not root (make stack runs one as root)"
                item.add_marker(pytest.mark.skipif(no_node, reason=reason))
            else:
                pytest.exit(
                    f"{name} is not set, and {item.nodeid} needs it: `make test` starts the "
                    "stack, and a node where Docker can run (root + apt; STACK_NODE=0: none)",
                    2,
                )


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    return _require("DATABASE_URL")


@pytest.fixture(scope="session")
async def template_db(admin_dsn: str) -> AsyncIterator[str]:
    """A migrated database that every test's database is cloned from (fast CREATE DATABASE)."""
    async with scratch_database(admin_dsn, "molam_tpl") as dsn:
        await migrate(dsn)
        yield database_of(dsn)


@pytest.fixture
async def database_url(
    admin_dsn: str, template_db: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A fresh migrated database for this test; DATABASE_URL points at it."""
    async with scratch_database(admin_dsn, "molam_t", template_db) as dsn:
        monkeypatch.setenv("DATABASE_URL", dsn)
        get_settings.cache_clear()
        try:
            yield dsn
        finally:
            get_settings.cache_clear()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_base_url() -> str:
    return _require("REDIS_URL")


@pytest.fixture
async def redis_url(redis_base_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A Redis database number of its own for this run (flushed first); REDIS_URL points at it.

    TEST_REDIS_DB picks the number (default 9) so parallel runs on one machine can differ.
    """
    url = own_redis_url(redis_base_url)
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _require("KAFKA_BOOTSTRAP_SERVERS")


CreateTopic = Callable[..., Awaitable[str]]


@pytest.fixture
async def create_topic(kafka_bootstrap: str) -> CreateTopic:
    """``await create_topic("wallet", partitions=3)`` makes a uniquely named topic."""

    async def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            await admin.close()
        await asyncio.sleep(0.05)
        return name

    return make


@pytest.fixture
def kafka_env(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., dict[str, str]]]:
    """Point KAFKA_* at fresh topic and group names; returns them as a dict."""

    def setup(**names: str) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:8]
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC": names.get("topic", f"wallet.{suffix}"),
            "KAFKA_CONSUMER_GROUP": names.get("group", f"group-{suffix}"),
            "ANOMALY_TOPIC": names.get("anomaly_topic", f"anomaly.{suffix}"),
            "DLQ_TOPIC": names.get("dlq_topic", f"dlq.{suffix}"),
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        return env

    yield setup
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and another CA."""
    return make_tls_files(tmp_path_factory.mktemp("kafka-tls"))


@pytest.fixture
async def tls_kafka(tls_files: TlsFiles) -> AsyncIterator[TlsBroker]:
    """A broker of its own reachable only over TLS with a client certificate
    (``helpers.kafka_tls.tls_broker``: Tansu behind a TLS proxy that it advertises)."""
    async with tls_broker(tls_files, client_certificates=True) as broker:
        yield broker
