"""Fixtures of the ingestion and job tests: Kafka topics, a consumer group and the fast group
timeouts of an in-process consumer (helpers in ``helpers.ingest``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from helpers.ingest import FAST_GROUP_ENV, Stack


@pytest.fixture
async def stack(
    database_url: str,
    redis_url: str,
    kafka_env: Callable[..., dict[str, str]],
    create_topic: Callable[..., Awaitable[str]],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Stack:
    """A wallet topic (``indirect`` parameter: its partitions, default 1) and a dead-letter
    topic of this test's own, with the environment of a consumer of them."""
    partitions = getattr(request, "param", 1)
    topic = await create_topic("wallet", partitions=partitions)
    dlq = await create_topic("dlq", partitions=1)
    env = kafka_env(topic=topic, dlq_topic=dlq)
    for k, v in FAST_GROUP_ENV.items():
        monkeypatch.setenv(k, v)
    full = dict(env) | FAST_GROUP_ENV | {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    return Stack(env["KAFKA_BOOTSTRAP_SERVERS"], topic, dlq, env["KAFKA_CONSUMER_GROUP"], full)
