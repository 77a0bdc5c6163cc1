"""The lag probe: ListOffsets (latest) + OffsetFetch, as ``kafka-consumer-groups`` and the
shared core's ``group_lag`` measure it, with the Kafka clients kept between polls.

Why not call ``group_lag`` every poll: it starts two clients, and each start fetches the
metadata of every topic on the cluster — with 100 pipelines polling every 15 s on a broker with
a few hundred topics, decoding that metadata was most of the operator's CPU (profiled). Here one
consumer (end offsets) and one admin client (committed offsets) per bootstrap address live as
long as the operator; their metadata is refreshed in the background, and a topic they do not
know yet makes them reconnect at most every ``refresh_seconds``. Asking the broker for one
named topic's metadata is not an option: brokers with topic auto-creation would create it.

The lag arithmetic stays the core's (``PartitionLag``/``GroupLag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from molam_operator.scaling import LagObservation, ProbeFailure
from molam_workloads.core.kafka import CLIENT_ID, GroupLag, TopicNotFound, measure_lag

METADATA_MAX_AGE_MS = 30_000


def observe(lag: GroupLag) -> LagObservation | ProbeFailure:
    """A measured group lag as the scaler sees it.

    A group that never committed is a failure, not "everything is lag": before the consumer's
    first commit the backlog says nothing about how far behind it is (it may start from the
    latest offset), and scaling on it would jump to the maximum and back.
    """
    if not lag.has_commits:
        return ProbeFailure.no_committed_offsets
    return LagObservation(
        lag=lag.total,
        partitions=len(lag.partitions),
        end_offsets=sum(p.end_offset for p in lag.partitions),
        committed=sum(p.committed if p.committed is not None else 0 for p in lag.partitions),
    )


@dataclass
class _Clients:
    consumer: AIOKafkaConsumer
    admin: AIOKafkaAdminClient

    async def close(self) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.admin.close()


class LagProber:
    """Long-lived Kafka clients per bootstrap address; ``close()`` them at shutdown."""

    def __init__(self, *, refresh_seconds: float = 10.0) -> None:
        self._clients: dict[str, _Clients] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshed: dict[str, float] = {}
        self._refresh_seconds = refresh_seconds

    async def _get(self, bootstrap: str) -> _Clients:
        clients = self._clients.get(bootstrap)
        if clients is not None:
            return clients
        async with self._locks.setdefault(bootstrap, asyncio.Lock()):
            if bootstrap not in self._clients:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=bootstrap,
                    client_id=CLIENT_ID,
                    enable_auto_commit=False,
                    metadata_max_age_ms=METADATA_MAX_AGE_MS,
                )
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=bootstrap,
                    client_id=CLIENT_ID,
                    metadata_max_age_ms=METADATA_MAX_AGE_MS,
                )
                clients = _Clients(consumer, admin)
                try:
                    await consumer.start()
                    await admin.start()
                except BaseException:
                    await clients.close()
                    raise
                self._clients[bootstrap] = clients
                self._refreshed[bootstrap] = time.monotonic()
            return self._clients[bootstrap]

    async def _drop(self, bootstrap: str) -> None:
        clients = self._clients.pop(bootstrap, None)
        if clients is not None:
            with contextlib.suppress(KafkaError, OSError):
                await clients.close()

    async def _partitions(self, bootstrap: str, topic: str) -> list[TopicPartition]:
        clients = await self._get(bootstrap)
        ids = clients.consumer.partitions_for_topic(topic)
        stale = time.monotonic() - self._refreshed.get(bootstrap, 0.0) >= self._refresh_seconds
        if not ids and stale:
            # Maybe created since the clients started: reconnect (a start reads all metadata).
            await self._drop(bootstrap)
            clients = await self._get(bootstrap)
            ids = clients.consumer.partitions_for_topic(topic)
        if not ids:
            raise TopicNotFound(f"topic {topic!r} does not exist")
        return [TopicPartition(topic, p) for p in sorted(ids)]

    async def group_lag(self, bootstrap: str, group: str, topic: str) -> GroupLag:
        parts = await self._partitions(bootstrap, topic)
        clients = await self._get(bootstrap)
        return await measure_lag(clients.consumer, clients.admin, group, parts)

    async def probe(
        self, bootstrap: str, group: str, topic: str, *, timeout: float
    ) -> tuple[LagObservation | ProbeFailure, str]:
        """Measure now; the second item is a one-line explanation for the LagProbe condition."""
        try:
            measured = await asyncio.wait_for(self.group_lag(bootstrap, group, topic), timeout)
        except TopicNotFound as exc:
            return ProbeFailure.topic_not_found, str(exc)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._drop(bootstrap)  # start afresh next time
            return ProbeFailure.broker_unreachable, f"Kafka at {bootstrap}: {exc!r}"
        result = observe(measured)
        if result is ProbeFailure.no_committed_offsets:
            return result, f"group {group!r} has no committed offsets on topic {topic!r} yet"
        assert isinstance(result, LagObservation)
        return result, (
            f"lag {result.lag} over {result.partitions} partition(s) of {topic!r} "
            f"for group {group!r}"
        )

    async def close(self) -> None:
        for bootstrap in list(self._clients):
            await self._drop(bootstrap)
