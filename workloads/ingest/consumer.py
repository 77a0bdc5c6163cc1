"""The consumer loop: Kafka batches in, one PostgreSQL transaction per batch out.

Per batch (one ``getmany``): decode every record; publish the malformed ones to the DLQ and
wait until the broker has them; write ledger + aggregates + offsets in one transaction
(``BatchWriter``); then, best effort, commit the offsets to Kafka (what lag tools read), set the
live counters in Redis and let SIRA look at the batch. PostgreSQL is the source of truth for
offsets: on every assignment each partition is sought to the offset stored beside the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from redis.exceptions import RedisError

from molam_workloads.core import metrics
from molam_workloads.core.events import InvalidEvent, TransactionEvent, decode_event
from molam_workloads.core.kafka import CLIENT_ID
from molam_workloads.ingest.aggregation import dedupe, horizon
from molam_workloads.ingest.dead_letters import dead_letter
from molam_workloads.ingest.live_counters import LiveCounters
from molam_workloads.ingest.settings import IngestSettings
from molam_workloads.ingest.writer import BatchWriter, load_offsets

log = logging.getLogger(__name__)

# A failed PostgreSQL write is retried (the batch is still in memory and nothing of it was
# committed); after this many attempts the process exits and its replacement resumes from the
# offsets in PostgreSQL.
WRITE_ATTEMPTS = 5
KAFKA_COMMIT_TIMEOUT = 5.0
_RETRYABLE_DB = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Detector(Protocol):
    async def on_batch(self, merchants: set[str | None], watermark: datetime) -> None: ...


@dataclass
class BatchReport:
    records: int = 0
    counted: list[TransactionEvent] = field(default_factory=list)
    duplicates: int = 0
    dead: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)
    watermark: datetime | None = None  # newest event time seen in the batch


class _SeekFromDatabase(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: Ingestor, consumer: AIOKafkaConsumer) -> None:
        self._ingest = ingest
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Let the in-flight batch finish its transaction first, so the next owner starts
        # exactly where it ended (abandoning it would be safe too, only slower).
        async with self._ingest.batch_lock:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
            for tp in revoked:
                with contextlib.suppress(KeyError):  # never measured on this consumer
                    metrics.CONSUMER_LAG.remove(str(tp.partition))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._ingest.seek_to_stored(self._consumer, assigned)


class Ingestor:
    """Owns the batch logic; the Kafka, PostgreSQL and Redis clients are lent by the caller."""

    def __init__(
        self,
        settings: IngestSettings,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        live: LiveCounters | None,
        detector: Detector | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.live = live
        self.detector = detector
        self.writer = BatchWriter(settings.kafka_consumer_group, settings.kafka_topic)
        self.batch_lock = asyncio.Lock()
        self.positions: dict[int, int] = {}

    def new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_consumer_group,
            client_id=CLIENT_ID,
            enable_auto_commit=False,
            # Explicit: a partition with no stored offset starts at its beginning, never at
            # "latest" (which would silently skip a backlog).
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_interval_ms=s.kafka_max_poll_interval_ms,
            max_partition_fetch_bytes=s.ingest_max_partition_fetch_bytes,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the consumer is always left and closed."""
        consumer = self.new_consumer()
        consumer.subscribe([self.settings.kafka_topic], listener=_SeekFromDatabase(self, consumer))
        await consumer.start()
        log.info(
            "consuming %s as group %s",
            self.settings.kafka_topic,
            self.settings.kafka_consumer_group,
        )
        try:
            while not stop.is_set():
                batch = await consumer.getmany(
                    timeout_ms=self.settings.ingest_poll_timeout_ms,
                    max_records=self.settings.ingest_batch_max_records,
                )
                if batch:
                    await self.process(consumer, batch)
                self._observe(consumer)
        finally:
            await consumer.stop()
            log.info("consumer stopped")

    async def seek_to_stored(
        self, consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition]
    ) -> None:
        if not assigned:
            return
        async with self.pool.acquire() as conn:
            stored = await load_offsets(
                conn,
                self.settings.kafka_consumer_group,
                self.settings.kafka_topic,
                [tp.partition for tp in assigned],
            )
        fresh = []
        for tp in assigned:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
                self.positions[tp.partition] = stored[tp.partition]
            else:
                fresh.append(tp)
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        log.info(
            "partitions assigned: %s (stored offsets %s)",
            sorted(tp.partition for tp in assigned),
            stored,
        )

    async def process(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> BatchReport:
        started = time.perf_counter()
        async with self.batch_lock:
            report = await self._commit_batch(consumer, batch)
        metrics.INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)
        await self._after_commit(report)
        return report

    async def _commit_batch(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> BatchReport:
        report = BatchReport()
        now = datetime.now(UTC)
        valid: list[TransactionEvent] = []
        dead_sends: list[Any] = []
        for tp, records in batch.items():
            if not records:
                continue
            for rec in records:
                report.records += 1
                try:
                    valid.append(decode_event(rec.value, now))
                except InvalidEvent as exc:
                    metrics.INGEST_ERRORS.labels(exc.reason).inc()
                    value = dead_letter(
                        reason=exc.reason,
                        detail=exc.detail,
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        value=rec.value,
                        key=rec.key,
                        now=now,
                    )
                    dead_sends.append(
                        await self.producer.send(self.settings.dlq_topic, value, key=rec.key)
                    )
            report.next_offsets[tp.partition] = records[-1].offset + 1
        if dead_sends:
            # Durable before the offsets move past them: a crash now re-reads (and re-sends).
            await asyncio.gather(*dead_sends)
            report.dead = len(dead_sends)
            log.warning("%d malformed event(s) sent to %s", report.dead, self.settings.dlq_topic)

        events = dedupe(valid)
        report.counted = await self._write(events, report.next_offsets, now)
        report.duplicates = len(valid) - len(report.counted)
        metrics.INGEST_EVENTS.labels("counted").inc(len(report.counted))
        metrics.INGEST_EVENTS.labels("duplicate").inc(report.duplicates)
        if valid:
            report.watermark = max(ev.occurred_at for ev in valid)
            lag = (datetime.now(UTC) - report.watermark).total_seconds()
            metrics.AGGREGATION_LAG.set(max(lag, 0.0))
        self.positions.update(report.next_offsets)
        await self._commit_kafka(consumer, batch, report.next_offsets)
        return report

    async def _write(
        self, events: list[TransactionEvent], next_offsets: dict[int, int], now: datetime
    ) -> list[TransactionEvent]:
        minute_since = horizon(now, self.settings.minute_agg_horizon_hours)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn:
                    await self.writer.ensure_partitions(conn, events)
                    return await self.writer.write(conn, events, next_offsets, minute_since)
            except _RETRYABLE_DB as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise
                delay = min(0.5 * 2 ** (attempt - 1), 8.0)
                log.warning("batch write failed (%r); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _commit_kafka(
        self,
        consumer: AIOKafkaConsumer,
        batch: Mapping[TopicPartition, list[ConsumerRecord]],
        next_offsets: dict[int, int],
    ) -> None:
        # Best effort: PostgreSQL already holds the truth; this copy feeds lag tools.
        assigned = consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(next_offsets[tp.partition], "")
            for tp in batch
            if tp.partition in next_offsets and tp in assigned
        }
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), KAFKA_COMMIT_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            log.info("Kafka offset commit skipped: %r", exc)

    async def _after_commit(self, report: BatchReport) -> None:
        if not report.counted:
            return
        if self.live is not None:
            try:
                await self.live.refresh(self.pool, report.counted)
            except (RedisError, OSError, *_RETRYABLE_DB) as exc:
                # The next batch of these merchants rewrites their absolute values anyway.
                log.warning("live counters not updated: %r", exc)
        if self.detector is not None:
            merchants = {ev.merchant_id for ev in report.counted}
            watermark = report.watermark or max(ev.occurred_at for ev in report.counted)
            try:
                await self.detector.on_batch(merchants, watermark)
            except Exception:
                # Anomaly detection is advisory: it must never stop ingestion.
                log.exception("SIRA detector failed on a batch")
                metrics.SIRA_FAILURES.inc()

    def _observe(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = self.positions.get(tp.partition)
            if high is not None and pos is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(high - pos, 0))
        metrics.observe_pool(self.pool)
