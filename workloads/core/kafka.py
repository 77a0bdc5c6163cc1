"""Kafka clients and the consumer-group lag probe shared by the `lag` command and the operator.

Lag is measured the way ``kafka-consumer-groups --describe`` does it: ListOffsets (latest) for
the end of each partition and OffsetFetch for the group's committed offsets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from molam_workloads.core.errors import MolamError, ServiceUnavailable

CLIENT_ID = "molam-analytics"
log = logging.getLogger(__name__)


class TopicNotFound(MolamError):
    """The topic does not exist (or has no partitions) on the cluster."""


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
async def producer(bootstrap: str, **kwargs: object) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped on exit (idempotent: retries never duplicate a record).

    A broker that refuses InitProducerId (Tansu answers UnknownError) gets a plain producer
    with ``acks="all"`` instead: still durable, but a retry may publish a record twice.
    """
    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id=CLIENT_ID, enable_idempotence=True, **kwargs
    )
    try:
        await prod.start()
    except KafkaConnectionError as exc:
        await prod.stop()
        raise ServiceUnavailable(f"Kafka at {bootstrap} is unreachable: {exc}") from None
    except KafkaError as exc:
        await prod.stop()
        log.warning("broker refused an idempotent producer (%r): using acks=all", exc)
        prod = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id=CLIENT_ID, acks="all", **kwargs
        )
        try:
            await prod.start()
        except KafkaError as exc2:
            await prod.stop()
            raise ServiceUnavailable(f"Kafka at {bootstrap} is unreachable: {exc2!r}") from None
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


async def group_lag(bootstrap: str, group: str, topic: str, *, timeout: float = 10.0) -> GroupLag:
    """End offset, committed offset and lag of every partition of ``topic`` for ``group``."""

    async def probe() -> GroupLag:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, client_id=CLIENT_ID, enable_auto_commit=False
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
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
        raise ServiceUnavailable(f"Kafka at {bootstrap} is unreachable: {exc!r}") from None
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka at {bootstrap} answered with an error: {exc!r}") from None
