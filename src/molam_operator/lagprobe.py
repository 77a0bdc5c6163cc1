"""The lag probe: ListOffsets (latest and earliest) + OffsetFetch, as ``kafka-consumer-groups``
and the shared core's ``group_lag`` measure it, with the Kafka clients kept between polls.

A partition the group has not committed on yet is read by the consumer from its log start
(it seeks there, CONSUMER_START): its lag counts from the log start
offset, as KEDA's Kafka scaler does with ``offsetResetPolicy: earliest`` (KEDA counts from 0;
the log start is exact once retention has deleted the oldest records).

Why not call ``group_lag`` every poll: it starts two clients, and each start fetches the
metadata of every topic on the cluster — with 100 pipelines polling every 15 s on a broker with
a few hundred topics, decoding that metadata was most of the operator's CPU (profiled). Here one
consumer (end offsets) and one admin client (committed offsets) per Kafka access (address and
credentials, kafka_access.py) live as long as the operator; their metadata is refreshed in the
background, and a topic they do not know yet makes them reconnect at most every
``refresh_seconds``. Asking the broker for one named topic's metadata is not an option: brokers
with topic auto-creation would create it.

The lag arithmetic stays the core's (``PartitionLag``/``GroupLag``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from molam_operator import kafka_access
from molam_operator.kafka_access import KafkaAccess
from molam_operator.scaling import LagObservation, ProbeFailure
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.kafka import (
    CLIENT_ID,
    GroupLag,
    TopicNotFound,
    client_options,
    measure_lag,
    tls_failure,
)

METADATA_MAX_AGE_MS = 30_000
# Where the ingest consumer starts on a partition without a committed offset (it seeks to the
# log start; tests/operator/test_lagprobe.py checks the two agree).
CONSUMER_START = "log start"


def positions(lag: GroupLag, starts: Mapping[int, int]) -> dict[int, int]:
    """Where the consumer reads each partition from: its committed offset, or the log start
    (``starts``: ListOffsets EARLIEST) where it has none or the commit fell behind retention."""
    return {
        p.partition: max(p.committed if p.committed is not None else 0, starts.get(p.partition, 0))
        for p in lag.partitions
    }


def observe(lag: GroupLag, starts: Mapping[int, int]) -> LagObservation:
    """A measured group lag as the scaler sees it: the end offsets minus where the consumer
    reads from, so a new group with a backlog scales on that backlog."""
    at = positions(lag, starts)
    return LagObservation(
        lag=sum(max(p.end_offset - at[p.partition], 0) for p in lag.partitions),
        partitions=len(lag.partitions),
        end_offsets=sum(p.end_offset for p in lag.partitions),
        committed=sum(min(at[p.partition], p.end_offset) for p in lag.partitions),
    )


@dataclass
class _Clients:
    consumer: AIOKafkaConsumer
    admin: AIOKafkaAdminClient
    options: dict[str, Any]  # what they were built with (the TLS context for diagnosis)
    used: float = 0.0  # time.monotonic() of the last probe

    async def close(self) -> None:
        try:
            await self.consumer.stop()
        finally:
            await self.admin.close()


class LagProber:
    """Long-lived Kafka clients per :class:`KafkaAccess`; ``close()`` them at shutdown.

    Pipelines with the same brokers and credentials share clients. Clients no probe used for
    ``idle_seconds`` are closed: those of a deleted pipeline, or of a rotated password.
    """

    def __init__(self, *, refresh_seconds: float = 10.0, idle_seconds: float = 600.0) -> None:
        self._clients: dict[KafkaAccess, _Clients] = {}
        self._locks: dict[KafkaAccess, asyncio.Lock] = {}
        self._refreshed: dict[KafkaAccess, float] = {}
        self._options: dict[KafkaAccess, dict[str, Any]] = {}
        self._refresh_seconds = refresh_seconds
        self._idle_seconds = idle_seconds

    def _client_options(self, access: KafkaAccess) -> dict[str, Any]:
        # Built once per access: reconnecting reuses the TLS context (no PEM files written).
        if access not in self._options:
            with kafka_access.connection(access) as conn:
                self._options[access] = client_options(conn)
        return self._options[access]

    async def _get(self, access: KafkaAccess) -> _Clients:
        clients = self._clients.get(access)
        if clients is not None:
            return clients
        async with self._locks.setdefault(access, asyncio.Lock()):
            if access not in self._clients:
                options = self._client_options(access)
                consumer = AIOKafkaConsumer(
                    client_id=CLIENT_ID,
                    enable_auto_commit=False,
                    metadata_max_age_ms=METADATA_MAX_AGE_MS,
                    **options,
                )
                admin = AIOKafkaAdminClient(
                    client_id=CLIENT_ID, metadata_max_age_ms=METADATA_MAX_AGE_MS, **options
                )
                clients = _Clients(consumer, admin, options)
                try:
                    await consumer.start()
                    await admin.start()
                except BaseException:
                    await clients.close()
                    raise
                self._clients[access] = clients
                self._refreshed[access] = time.monotonic()
            return self._clients[access]

    async def _drop(self, access: KafkaAccess) -> None:
        clients = self._clients.pop(access, None)
        if clients is not None:
            with contextlib.suppress(KafkaError, OSError):
                await clients.close()

    async def _drop_idle(self) -> None:
        now = time.monotonic()
        for access, clients in list(self._clients.items()):
            if now - clients.used >= self._idle_seconds:
                await self._drop(access)
                self._options.pop(access, None)
                self._locks.pop(access, None)
                self._refreshed.pop(access, None)

    async def _partitions(self, access: KafkaAccess, topic: str) -> list[TopicPartition]:
        clients = await self._get(access)
        ids = clients.consumer.partitions_for_topic(topic)
        stale = time.monotonic() - self._refreshed.get(access, 0.0) >= self._refresh_seconds
        if not ids and stale:
            # Maybe created since the clients started: reconnect (a start reads all metadata).
            await self._drop(access)
            clients = await self._get(access)
            ids = clients.consumer.partitions_for_topic(topic)
        if not ids:
            raise TopicNotFound(f"topic {topic!r} does not exist")
        return [TopicPartition(topic, p) for p in sorted(ids)]

    async def group_lag(
        self, access: KafkaAccess, group: str, topic: str
    ) -> tuple[GroupLag, dict[int, int]]:
        """The group's lag and each partition's log start offset."""
        parts = await self._partitions(access, topic)
        clients = await self._get(access)
        clients.used = time.monotonic()
        measured = await measure_lag(clients.consumer, clients.admin, group, parts)
        starts = await clients.consumer.beginning_offsets(parts)
        return measured, {tp.partition: int(offset) for tp, offset in starts.items()}

    async def probe(
        self, access: KafkaAccess, group: str, topic: str, *, timeout: float
    ) -> tuple[LagObservation | ProbeFailure, str]:
        """Measure now; the second item is a one-line explanation for the LagProbe condition."""
        await self._drop_idle()
        try:
            measured, starts = await asyncio.wait_for(self.group_lag(access, group, topic), timeout)
        except TopicNotFound as exc:
            return ProbeFailure.topic_not_found, str(exc)
        except ConfigError as exc:  # a PEM the TLS context cannot load
            return ProbeFailure.kafka_secret_invalid, str(exc)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._drop(access)  # start afresh next time
            options = self._options.get(access)
            reason = await tls_failure(options) if options else None
            return ProbeFailure.broker_unreachable, (
                f"Kafka at {access.bootstrap_servers}: {reason or repr(exc)}"
            )
        result = observe(measured, starts)
        message = (
            f"lag {result.lag} over {result.partitions} partition(s) of {topic!r} "
            f"for group {group!r}"
        )
        uncommitted = sum(1 for p in measured.partitions if p.committed is None)
        if uncommitted:
            message += (
                f" ({uncommitted} partition(s) without a committed offset counted from the log "
                f"start, where the consumer begins: the {CONSUMER_START})"
            )
        return result, message

    async def close(self) -> None:
        for access in list(self._clients):
            await self._drop(access)
