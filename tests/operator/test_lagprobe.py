"""The lag probe against the real Kafka-protocol broker of the local stack (Tansu).

Records are produced one per batch (send_and_wait each): Tansu's ListOffsets LATEST answers the
base offset of the last batch + 1 (LOCAL-STACK.md), exact only for single-record batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from helpers.ingest import read_topic, running_consumer

from molam_operator.kafka_access import KafkaAccess
from molam_operator.lagprobe import CONSUMER_START, LagProber
from molam_operator.scaling import LagObservation


async def test_the_probe_assumes_where_the_ingest_consumer_starts(
    kafka_env: Callable[..., dict[str, str]], database_url: str, redis_url: str
) -> None:
    """The lag of a group without commits counts from the log start only because the ingest
    consumer starts there: records published before the group's first start are all read
    (here undecodable ones, so each shows as a dead letter)."""
    assert CONSUMER_START == "log start"
    env = kafka_env()
    await produce(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_TOPIC"], {0: 3})
    async with running_consumer():
        dead = await read_topic(env["KAFKA_BOOTSTRAP_SERVERS"], env["DLQ_TOPIC"], expect=3)
    assert len(dead) == 3


async def produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for partition, count in per_partition.items():
            for _ in range(count):
                await producer.send_and_wait(topic, b"{}", partition=partition)
    finally:
        await producer.stop()


async def test_a_new_group_with_a_backlog_lags_by_the_whole_backlog(
    kafka_bootstrap: str, create_topic: Callable[..., Any]
) -> None:
    topic = await create_topic("lag.new", partitions=3)
    group = f"never-committed-{uuid.uuid4().hex[:8]}"
    await produce(kafka_bootstrap, topic, {0: 7, 1: 3, 2: 0})
    prober = LagProber()
    try:
        observation, message = await prober.probe(
            KafkaAccess(kafka_bootstrap), group, topic, timeout=10
        )
        assert observation == LagObservation(lag=10, partitions=3, end_offsets=10, committed=0)
        assert "3 partition(s) without a committed offset counted from the log start" in message

        # Once the group commits on one partition, that one counts from its commit.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): 5})
        finally:
            await consumer.stop()
        observation, message = await prober.probe(
            KafkaAccess(kafka_bootstrap), group, topic, timeout=10
        )
        assert observation == LagObservation(lag=2 + 3, partitions=3, end_offsets=10, committed=5)
        assert "2 partition(s) without a committed offset" in message
    finally:
        await prober.close()
