"""The consumer loop: Kafka batches in, one PostgreSQL transaction per batch out.

Per batch (up to ``INGEST_BATCH_MAX_RECORDS`` records, fetched in chunks): decode every record;
publish the malformed ones to the DLQ and wait until the broker has them; write ledger +
aggregates + offsets in one transaction (``BatchWriter``); then, best effort, commit the offsets
to Kafka (what lag tools read), let SIRA look at the batch and, at most every
``live_interval`` (at once when idle), set the live counters in Redis. PostgreSQL is the
source of truth for offsets: on every assignment each partition is sought to the offset stored
beside the data, and a batch read before a rebalance is abandoned rather than written (its
partitions are re-read by their owner from those offsets).

No record stops a partition. A value that cannot be decoded, whatever it makes the decoder
raise, goes to the DLQ with its reason. Records the Kafka client cannot unpack at all (a codec
it lacks, a bad CRC, a corrupt compressed batch) are fetched once more, then go to the DLQ as
one dead letter with their offsets and are stepped over; the step is stored in PostgreSQL with
the batch's offsets, in the same transaction, like any other record's. Only errors outside a
record's own bytes (the broker, the group, PostgreSQL) stop the batch.

No outage stops the process. A stopped batch is kept in memory and its write tried again,
with a capped backoff, for as long as PostgreSQL is down, restarting or read-only; dead letters
are sent again until the broker has them; each wait is logged once per interval and shown in
``analytics_waiting_for`` and /health (``ingest.health``). Stored offsets found outside their
partition's log are never skipped silently (``ingest.offsets``). docs/faults.md has the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import (
    CorruptRecordException,
    IllegalStateError,
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    UnsupportedCodecError,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from redis.exceptions import RedisError

from molam_workloads.core import metrics
from molam_workloads.core.errors import MolamError
from molam_workloads.core.events import (
    EARLIEST_EVENT,
    MAX_CLOCK_SKEW,
    InvalidEvent,
    TransactionEvent,
    decode_event,
)
from molam_workloads.core.kafka import CLIENT_ID, client_options
from molam_workloads.ingest import ledger
from molam_workloads.ingest.aggregation import (
    Summary,
    add_event,
    from_micros,
    horizon,
    hours,
    merchants_on,
    micros,
)
from molam_workloads.ingest.dead_letters import dead_letter
from molam_workloads.ingest.health import ConsumerHealth
from molam_workloads.ingest.live_counters import LiveCounters
from molam_workloads.ingest.offsets import OffsetLoss, OffsetsLost, outside_log
from molam_workloads.ingest.settings import IngestSettings
from molam_workloads.ingest.watermark import watermark
from molam_workloads.ingest.writer import BatchWriter, load_offsets, reset_offsets

log = logging.getLogger(__name__)
T = TypeVar("T")

KAFKA_COMMIT_TIMEOUT = 5.0
# An idle consumer asks the broker for metadata this often, at most: aiokafka retries a broker
# that went away in silence, and this is how the consumer learns it waits for one (/health).
KAFKA_PROBE_SECONDS = 5.0
# Reading a log's last records to confirm its end: calls at most, and each one's wait.
READ_END_CALLS = 50
READ_END_WAIT_MS = 500
# Decoding yields to the event loop after this many values, so the previous batch's write is
# not held up behind a whole batch of CPU work (docs/decisions/001-fetch-chunk.md).
FEED_CHUNK = 2000
YIELD_EVERY = 50
# A batch is fetched this many records at a time, the event loop getting a turn in between:
# aiokafka parses one getmany's records in a single piece (docs/decisions/001-fetch-chunk.md).
FETCH_CHUNK = 2000
# While batches keep coming, live counters are refreshed at most this often, and as soon as
# the consumer is idle (docs/decisions/003-live-refresh.md).
LIVE_REFRESH_SECONDS = 0.5
# ... and no sooner than this many times the last refresh took, so that refreshes of thousands
# of merchants take at most a quarter of the time while a backlog drains, capped so that Redis
# trails PostgreSQL by at most LIVE_REFRESH_MAX_SECONDS plus one refresh and one batch
# (docs/decisions/025-live-refresh-adaptive.md).
LIVE_REFRESH_BUSY_FACTOR = 4.0
LIVE_REFRESH_MAX_SECONDS = 5.0


def live_interval(took: float) -> float:
    """Seconds from the start of one live-counter refresh to the next while batches keep
    coming, given how long the last one ``took``."""
    return min(max(LIVE_REFRESH_SECONDS, LIVE_REFRESH_BUSY_FACTOR * took), LIVE_REFRESH_MAX_SECONDS)


# What a write is retried on (the batch kept in memory). InternalClientError: a connection that
# lost its server mid-operation fails its reset when released; the pool has terminated it.
_RETRYABLE_DB = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# aiokafka unpacks a fetched batch in this generator: an exception raised under it is about the
# batch's own bytes (its CRC, its codec, its framing), and its frame holds the batch's offsets.
_UNPACK = PartitionRecords._unpack_records.__code__
# Reading the records before an unreadable batch, one getmany call each, stops after this many
# calls that bring nothing (the broker then is the trouble, not the batch).
UNREADABLE_IDLE_READS = 20


# A dead letter on its way: the source partition, the original key, the dead letter's value.
_Letter = tuple[int, bytes | None, bytes]


class _TxnId(msgspec.Struct):
    txn_id: str


# Reads only a value's txn_id (to find the copies of a conflicting duplicate).
_txn_id_of = msgspec.json.Decoder(_TxnId).decode


@dataclass
class UnreadableRecords(ConsumerRecord[bytes, bytes]):  # type: ignore[misc]
    """Stands in a batch for offsets ``first_offset``..``offset`` of a partition that could not
    be read at all (the fetcher raised while unpacking them): dead-lettered, then stepped over.
    Its ``offset`` is the last one, so the batch's next offset moves past them in PostgreSQL."""

    first_offset: int = 0
    reason: str = ""
    detail: str = ""


# The counter of each reason, found once (a labels() lookup costs more than the increment).
_errors = functools.cache(metrics.INGEST_ERRORS.labels)


def _unreadable_at(exc: BaseException) -> tuple[TopicPartition, int, int] | None:
    """(partition, first offset, next offset) of the records ``exc`` came from while aiokafka
    unpacked them; None when it did not come from a fetched batch's own bytes."""
    if isinstance(exc, RecordTooLargeError) and len(exc.args) >= 3:
        tp, offset = exc.args[1], exc.args[2]  # aiokafka's message arguments
        if isinstance(tp, TopicPartition) and isinstance(offset, int):
            return tp, offset, offset + 1
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code is _UNPACK:
            tp, batch = frame.f_locals.get("tp"), frame.f_locals.get("next_batch")
            if not isinstance(tp, TopicPartition):
                return None
            # A v0/v1 message set has no base offset: it starts where reading stopped.
            first = getattr(batch, "base_offset", None)
            if not isinstance(first, int):
                first = getattr(frame.f_locals.get("self"), "next_fetch_offset", None)
            end = getattr(batch, "next_offset", None)
            if not isinstance(first, int):
                return None
            return tp, first, end if isinstance(end, int) and end > first else first + 1
    return None


def _unreadable_reason(exc: BaseException) -> str:
    if isinstance(exc, UnsupportedCodecError):
        return "unsupported_codec"
    if isinstance(exc, CorruptRecordException):
        return "corrupt_batch"
    if isinstance(exc, RecordTooLargeError):
        return "record_too_large"
    return "unreadable_batch"


class Detector(Protocol):
    async def on_batch(self, merchants: set[str | None], watermark: datetime) -> None: ...


@dataclass
class PreparedBatch:
    """One fetched batch, decoded and summed, its dead letters on their way to the DLQ."""

    epoch: int  # assignment generation it was read under
    now: datetime  # when it was read: decode_event's and the ledger retention's reference
    summary: Summary  # unique transactions, summed
    records: int = 0
    accepted: int = 0  # valid records, copies of one transaction included
    next_offsets: dict[int, int] = field(default_factory=dict)
    dead: int = 0
    # Its dead letters, and their deliveries: commit() waits for them before the offsets move
    # (and sends them again while the broker is away).
    letters: list[_Letter] = field(default_factory=list)
    dead_letters: list[asyncio.Future[Any]] = field(default_factory=list)
    watermark: datetime | None = None  # newest event time seen in the batch
    newest: dict[int, datetime] = field(default_factory=dict)  # per partition
    # The fetched records, kept for the rare conflicting duplicate the ledger finds at write.
    source: Mapping[TopicPartition, list[ConsumerRecord]] = field(default_factory=dict)
    conflicts: int = 0  # of its transactions, those the ledger held with other content
    # Set by commit(): True once the batch's transaction committed, False if it never will.
    written: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class BatchReport:
    records: int = 0
    counted: Summary = field(default_factory=Summary)  # the transactions newly counted
    duplicates: int = 0
    dead: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)
    watermark: datetime | None = None
    event_time: datetime | None = None  # how far event time has certainly progressed (SIRA)
    abandoned: bool = False  # read before a rebalance: left for the partition's next owner


class _SeekFromDatabase(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingest: Ingestor, consumer: AIOKafkaConsumer) -> None:
        self._ingest = ingest
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self._ingest.epoch += 1  # batches read before now and not yet writing are abandoned
        # Let the batches already writing finish their transactions first, so the next owner
        # starts exactly where they ended (abandoning them would be safe too, only slower).
        await self._ingest.settle()
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
        health: ConsumerHealth | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.live = live
        self.detector = detector
        self.writer = BatchWriter(settings.kafka_consumer_group, settings.kafka_topic)
        self.health = health or ConsumerHealth()
        # Set where the consumer must stop (offsets lost, policy stop): run() raises it.
        self.fatal: MolamError | None = None
        self._probe: asyncio.Task[None] | None = None
        self._heard_at = time.monotonic()  # the broker's last answer with records
        self._writing: set[asyncio.Task[Any]] = set()  # commit() calls under way
        # Held from a batch's COMMIT through its Kafka offset commit: batches that overlap in
        # PostgreSQL still report, commit to Kafka and hand over their follow-ups in order.
        self._reporting = asyncio.Lock()
        self.positions: dict[int, int] = {}
        # Newest event time consumed per assigned partition (for the SIRA watermark).
        self.newest: dict[int, datetime] = {}
        self.epoch = 0  # bumped at every revocation and assignment
        # Per assigned partition, the offset after the last record fetch() handed out (or the
        # stored one); a partition missing here is read from its beginning.
        self._next: dict[TopicPartition, int] = {}
        # Per partition, the offset where unreadable records were last met: met there again,
        # they are skipped.
        self._unreadable: dict[TopicPartition, int] = {}
        self._follow_up: asyncio.Task[None] | None = None
        self._live_due: set[str | None] = set()  # merchants whose live counters are behind
        self._live_at = 0.0  # time.monotonic() of the last live-counter refresh
        self.live_interval = LIVE_REFRESH_SECONDS  # the next one's, from the last one's duration
        self._trimming: asyncio.Task[None] | None = None  # ledger retention, in the background
        self._trimmed_at = -ledger.TRIM_EVERY_SECONDS  # time.monotonic() of the last trim
        # Running totals of this consumer (records, counted, duplicates, dead, abandoned).
        self.totals: dict[str, int] = dict.fromkeys(
            ("records", "counted", "duplicates", "dead", "abandoned"), 0
        )

    def new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **client_options(s),
            group_id=s.kafka_consumer_group,
            client_id=CLIENT_ID,
            enable_auto_commit=False,
            # None: every partition is sought explicitly (stored offset, or its beginning), and
            # a fetch out of range raises instead of silently jumping (ingest.offsets).
            auto_offset_reset="none",
            group_instance_id=s.kafka_group_instance_id or os.environ.get("POD_NAME") or None,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_interval_ms=s.kafka_max_poll_interval_ms,
            max_partition_fetch_bytes=s.ingest_max_partition_fetch_bytes,
            fetch_max_wait_ms=s.ingest_fetch_max_wait_ms,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the consumer is always left and closed.

        While batches are written to PostgreSQL (another core's work), the next one is fetched
        and decoded here. Two write at once at most, the newer one committing after the older
        (see ``commit``): offsets and sums reach PostgreSQL strictly in order.
        """
        consumer = self.new_consumer()
        consumer.subscribe([self.settings.kafka_topic], listener=_SeekFromDatabase(self, consumer))
        await consumer.start()
        log.info(
            "consuming %s as group %s",
            self.settings.kafka_topic,
            self.settings.kafka_consumer_group,
        )
        # At most two batches write at once: the newer one writes its ledger while the older
        # one adds its aggregates and commits (see BatchWriter.write).
        older: asyncio.Task[BatchReport] | None = None
        writing: asyncio.Task[BatchReport] | None = None
        previous: PreparedBatch | None = None
        try:
            while not stop.is_set():
                batch, epoch = await self.fetch(consumer)
                if self.fatal is not None:
                    raise self.fatal
                if batch:
                    self._heard_at = time.monotonic()
                    self.health.kafka.recovered()  # records came: the broker is back
                    prepared = await self.prepare(batch, epoch)
                    if older is not None:
                        await older
                    older = writing
                    writing = asyncio.create_task(self.commit(consumer, prepared, previous))
                    previous = prepared
                elif writing is not None and writing.done():
                    for done in (older, writing):
                        if done is not None:
                            await done
                    older = writing = None
                    previous = None
                    await self.drain()  # idle: live counters now, not with the next batch
                else:
                    self._maybe_probe(consumer)
                self._maybe_trim()
                self._observe(consumer)
            for last in (older, writing):
                if last is not None:
                    await last
            older = writing = None
            await self.drain()
        finally:
            unfinished: list[asyncio.Task[Any] | None] = [
                older,
                writing,
                self._follow_up,
                self._trimming,
                self._probe,
            ]
            for left in unfinished:
                if left is not None and not left.done():
                    # Leaving on an error: nothing of an unfinished transaction is kept, and
                    # live counters are rewritten whole by the next batch anyway.
                    left.cancel()
                    with contextlib.suppress(BaseException):
                        await left
            await consumer.stop()
            log.info("consumer stopped")

    async def seek_to_stored(
        self, consumer: AIOKafkaConsumer, assigned: Sequence[TopicPartition]
    ) -> None:
        if not assigned:
            return
        # Paused until sought: otherwise the fetcher starts at the default reset position while
        # PostgreSQL is being asked, and getmany() hands out records from there.
        consumer.pause(*assigned)
        resume = True
        try:
            s = self.settings
            stored = await self._retry_db(
                "loading the stored offsets",
                lambda conn: load_offsets(
                    conn,
                    s.kafka_consumer_group,
                    s.kafka_topic,
                    [tp.partition for tp in assigned],
                ),
            )
            # Stored offsets outside the log: records deleted before they were read, or a log
            # truncated or re-created (ingest.offsets).
            known = [tp for tp in assigned if tp.partition in stored]
            starts, ends = await self._log_range(known, consumer)
            for tp in known:
                if stored[tp.partition] > ends[tp.partition]:
                    ends[tp.partition] = await self._read_log_end(
                        tp, ends[tp.partition], stored[tp.partition]
                    )
            self.epoch += 1
            self.newest = {}  # partitions and their progress change hands at a rebalance
            self._next, self._unreadable = {}, {}
            fresh = []
            for tp in assigned:
                if tp.partition in stored:
                    consumer.seek(tp, stored[tp.partition])
                    self.positions[tp.partition] = stored[tp.partition]
                    self._next[tp] = stored[tp.partition]
                else:
                    fresh.append(tp)
            if fresh:
                await consumer.seek_to_beginning(*fresh)
            lost = outside_log(s.kafka_topic, stored, starts, ends)
            if lost:
                resume = await self._offsets_lost(consumer, lost)
        finally:
            if resume:
                consumer.resume(*assigned)
        log.info(
            "partitions assigned: %s (stored offsets %s)",
            sorted(tp.partition for tp in assigned),
            stored,
        )

    async def process(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> BatchReport:
        """Prepare and commit one batch, follow-ups included (no pipelining)."""
        report = await self.commit(consumer, await self.prepare(batch))
        await self.drain()
        return report

    async def fetch(
        self, consumer: AIOKafkaConsumer
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], int]:
        """Up to ``INGEST_BATCH_MAX_RECORDS`` records, ``FETCH_CHUNK`` at a time, and the
        assignment generation they were read under (a rebalance ends the batch early)."""
        most = self.settings.ingest_batch_max_records
        batch = await self._getmany(
            consumer, self.settings.ingest_poll_timeout_ms, min(FETCH_CHUNK, most)
        )
        epoch = self.epoch
        total = sum(len(records) for records in batch.values())
        while batch and total < most:
            await asyncio.sleep(0)
            if self.epoch != epoch:
                break  # prepared under the old generation, the batch is abandoned, not written
            more = await self._getmany(consumer, 0, min(FETCH_CHUNK, most - total))
            if not more:
                break
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                total += len(records)
        return batch, epoch

    async def _getmany(
        self, consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """``consumer.getmany``; records the fetcher cannot unpack are met once more, then
        stand in the result as one ``UnreadableRecords`` (dead-lettered by ``prepare``)."""
        try:
            got: dict[TopicPartition, list[ConsumerRecord]] = await consumer.getmany(
                timeout_ms=timeout_ms, max_records=max_records
            )
        except OffsetOutOfRangeError as exc:
            await self._out_of_range(consumer, exc)
            return {}
        except NoOffsetForPartitionError:
            # Newly assigned, and the listener has not sought it yet (it is asking PostgreSQL):
            # aiokafka looked for a Kafka-committed offset meanwhile. The seek comes.
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        except Exception as exc:
            where = _unreadable_at(exc)
            if where is None:
                raise  # not about the records' bytes: the broker, the group, a bug
            return await self._unreadable_met(consumer, exc, *where)
        for tp, records in got.items():
            self._next[tp] = records[-1].offset + 1
        return got

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        # A getmany that raised dropped what it had already read of every partition, and moved
        # some of their positions past it: each goes back to the end of what fetch() handed out.
        for tp in consumer.assignment():
            if tp in self._next:
                consumer.seek(tp, self._next[tp])
            else:
                await consumer.seek_to_beginning(tp)

    async def _unreadable_met(
        self, consumer: AIOKafkaConsumer, exc: Exception, tp: TopicPartition, first: int, end: int
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        try:
            await self._rewind(consumer)
        except IllegalStateError:  # a rebalance meanwhile: the assignment seeks every partition
            return {}
        reason = _unreadable_reason(exc)
        if self._unreadable.get(tp) != first:
            # Once more first: a batch damaged on the way (TCP's checksum is weak) reads fine
            # when fetched again. Met at the same place again, it is skipped below.
            self._unreadable[tp] = first
            log.warning(
                "records of %s from offset %d cannot be read (%r): fetching them again",
                tp, first, exc,
            )  # fmt: skip
            return {}
        del self._unreadable[tp]
        try:
            records = await self._read_up_to(consumer, tp, first)
            first = max(first, await consumer.position(tp))
        except IllegalStateError:  # no longer ours: its next owner meets the records again
            return {}
        skipped = UnreadableRecords(
            topic=tp.topic, partition=tp.partition, offset=end - 1, timestamp=-1,
            timestamp_type=0, key=None, value=None, checksum=None, serialized_key_size=-1,
            serialized_value_size=-1, headers=(), first_offset=first, reason=reason,
            detail=f"{type(exc).__name__}: {exc}"[:1000],
        )  # fmt: skip
        consumer.seek(tp, end)
        self._next[tp] = end
        log.error(
            "records of %s at offsets %d..%d cannot be read (%s): dead-lettered and skipped",
            tp, first, end - 1, reason,
        )  # fmt: skip
        return {tp: [*records, skipped]}

    async def _read_up_to(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, first: int
    ) -> list[ConsumerRecord]:
        """The readable records of ``tp`` before offset ``first``, one getmany call each: a
        call asked for one record stops before the next batch, so never reaches the bad one."""
        records: list[ConsumerRecord] = []
        idle = 0
        while await consumer.position(tp) < first and idle < UNREADABLE_IDLE_READS:
            try:
                got = await consumer.getmany(
                    tp, timeout_ms=self.settings.ingest_poll_timeout_ms, max_records=1
                )
            except Exception as exc:
                if _unreadable_at(exc) is None:
                    raise
                break  # what is left before ``first`` are gaps (e.g. control records)
            if got.get(tp):
                records.extend(got[tp])
                self._next[tp] = got[tp][-1].offset + 1
            else:
                idle += 1
        if await consumer.position(tp) < first and idle >= UNREADABLE_IDLE_READS:
            raise KafkaError(f"cannot read {tp} up to offset {first} to skip what follows")
        return records

    async def prepare(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord]], epoch: int | None = None
    ) -> PreparedBatch:
        """Decode and sum a batch; malformed records are sent to the DLQ (``commit`` waits until
        the broker has them, before anything of the batch is written).

        The summing happens here, while the previous batch is still being written. The compiled
        summary reads the plainly valid values itself, ``FEED_CHUNK`` at a time; each value it
        is not sure of is decided by ``decode_event``, in order (the first copy of a
        transaction is the one counted).
        """
        now = datetime.now(UTC)
        since = horizon(now, self.settings.minute_agg_retention_hours)
        prepared = PreparedBatch(
            epoch=self.epoch if epoch is None else epoch,
            now=now,
            summary=Summary(None if since is None else micros(since)),
        )
        oldest = ledger.oldest_accepted(now, self.settings.ledger_retention_days)
        prepared.source = batch
        letters: list[_Letter] = []
        for tp, records in batch.items():
            if not records:
                continue
            newest = await self._read(records, prepared, oldest, letters)
            if newest is not None:
                prepared.newest[tp.partition] = from_micros(newest)
            prepared.records += len(records)
            prepared.next_offsets[tp.partition] = records[-1].offset + 1
        if letters:
            prepared.letters = letters
            try:
                prepared.dead_letters = await self._send_dead_letters(letters)
            except KafkaError as exc:  # sent again by commit(), which waits for the broker
                self.health.kafka.failed(exc, "sending dead letters")
            prepared.dead = len(letters)
            log.warning("%d malformed event(s) sent to %s", prepared.dead, self.settings.dlq_topic)
        if prepared.newest:
            prepared.watermark = max(prepared.newest.values())
        return prepared

    async def _read(
        self,
        records: list[ConsumerRecord],
        prepared: PreparedBatch,
        oldest: datetime | None,
        letters: list[_Letter],
    ) -> int | None:
        """Add one partition's records to the batch's summary, in order; the newest event time
        among them (epoch microseconds), None when none was valid."""
        summary, now = prepared.summary, prepared.now
        # What decode_event and the retention check accept, as bounds of the summary's own
        # reading (it leaves anything outside them to decode_event, which says why).
        lo = micros(EARLIEST_EVENT if oldest is None else max(oldest, EARLIEST_EVENT))
        hi = micros(now + MAX_CLOCK_SKEW)
        values = [rec.value for rec in records]
        times: list[int] = []
        decided = 0  # values decided by the model
        i = 0
        while i < len(values):
            end = min(i + FEED_CHUNK, len(values))
            stop, fed_newest = summary.feed(values, i, end, lo, hi)
            prepared.accepted += stop - i
            if fed_newest is not None:
                times.append(fed_newest)
            if stop == end:
                i = end
                # Let the previous batch's write task move on to its next statement.
                await asyncio.sleep(0)
                continue
            i = stop + 1  # the summary was not sure of values[stop]: the model decides
            decided += 1
            if decided % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            rec = records[stop]
            if type(rec) is UnreadableRecords:
                letters.append(self._unreadable_letter(rec, now))
                continue
            try:
                ev = self._decode(rec.value, now, oldest)
                add_event(summary, ev)  # its checks refuse before they change anything
            except InvalidEvent as exc:
                letters.append(self._dead_letter(rec, exc, now))
                continue
            except Exception as exc:
                # Whatever a record's own bytes make the model or the summary raise, that
                # record goes to the DLQ: one record must never stop the partition.
                log.warning("offset %d of %s not decodable: %r", rec.offset, rec.topic, exc)
                invalid = InvalidEvent("undecodable", f"{type(exc).__name__}: {exc}"[:1000])
                letters.append(self._dead_letter(rec, invalid, now))
                continue
            prepared.accepted += 1
            times.append(micros(ev.occurred_at))
        return max(times, default=None)

    def _decode(
        self, value: bytes | None, now: datetime, oldest: datetime | None
    ) -> TransactionEvent:
        ev = decode_event(value, now)
        if oldest is not None and ev.occurred_at < oldest:
            raise InvalidEvent(
                "beyond_ledger_retention",
                f"occurred_at {ev.occurred_at.isoformat()} is older than"
                f" LEDGER_RETENTION_DAYS={self.settings.ledger_retention_days}:"
                " a copy of it could no longer be recognised (backfill counts"
                " such history from wallet_transactions)",
            )
        return ev

    def _dead_letter(self, rec: ConsumerRecord, exc: InvalidEvent, now: datetime) -> _Letter:
        """The dead letter of ``rec`` (sent with the batch's others by ``_send_dead_letters``)."""
        _errors(exc.reason).inc()
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
        return rec.partition, rec.key, value

    def _unreadable_letter(self, rec: UnreadableRecords, now: datetime) -> _Letter:
        """The dead letter of records that could not be read."""
        _errors(rec.reason).inc()
        metrics.INGEST_UNREADABLE.labels(rec.reason).inc(rec.offset + 1 - rec.first_offset)
        value = dead_letter(
            reason=rec.reason,
            detail=rec.detail,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.first_offset,
            last_offset=rec.offset,
            value=None,
            now=now,
        )
        return rec.partition, None, value

    async def _send_dead_letters(self, letters: list[_Letter]) -> list[asyncio.Future[Any]]:
        """Hand a batch's dead letters to the producer, as few record batches (one call per
        letter cost ~25 us of Python each); the futures of their delivery.

        A source partition's dead letters go to one DLQ partition, in their order."""
        topic = self.settings.dlq_topic
        partitions = sorted(await self.producer.partitions_for(topic))
        open_batches: dict[int, Any] = {}
        sent: list[asyncio.Future[Any]] = []
        for source, key, value in letters:
            target = partitions[source % len(partitions)]
            batch = open_batches.get(target)
            if batch is None or batch.append(key=key, value=value, timestamp=None) is None:
                if batch is not None:  # full: on its way, and a new one for this letter
                    sent.append(await self.producer.send_batch(batch, topic, partition=target))
                batch = open_batches[target] = self.producer.create_batch()
                # An empty batch takes one record of any size (the request's limit applies).
                batch.append(key=key, value=value, timestamp=None)
        for target, batch in open_batches.items():
            sent.append(await self.producer.send_batch(batch, topic, partition=target))
        return sent

    async def commit(
        self,
        consumer: AIOKafkaConsumer,
        prepared: PreparedBatch,
        previous: PreparedBatch | None = None,
    ) -> BatchReport:
        """Write a prepared batch (one transaction), then the best-effort follow-ups.

        ``previous``: the batch committed just before this one, which may still be writing; if
        so, this one writes its ledger meanwhile and commits after it (``BatchWriter.write``).
        """
        report = BatchReport(
            records=prepared.records,
            dead=prepared.dead,
            next_offsets=prepared.next_offsets,
            watermark=prepared.watermark,
        )
        task = asyncio.current_task()
        assert task is not None
        self._writing.add(task)
        try:
            if prepared.letters:
                # Durable before the offsets move past them (a crash re-reads and re-sends them:
                # the DLQ is at-least-once). Waited for here, beside the next batch's decoding.
                await self._deliver(prepared)
            if prepared.epoch != self.epoch:
                # Read before a rebalance: whoever owns the partitions now re-reads them from
                # the offsets in PostgreSQL. Writing it would be harmless (the ledger dedupes)
                # but pointless.
                report.abandoned = True
                self.totals["abandoned"] += report.records
                log.info("batch of %d record(s) abandoned after a rebalance", report.records)
                return report
            summary, after, clashes = prepared.summary, None, 0
            if previous is not None and not previous.written.done():
                # Its transactions count when it commits, and this batch commits only after
                # it: leaving them out here keeps the two ledger inserts from colliding. Those
                # this batch carries with other content are conflicting duplicates.
                clash = summary.conflicts(previous.summary)
                if clash:
                    clashes = await self._conflicting(prepared, clash)
                summary = summary.without(previous.summary)
                after = previous.written
            started = time.perf_counter()
            report.counted = await self._write(prepared, summary, after)
            # Before taking the lock: the next batch's COMMIT waits for this, not for the
            # Kafka offset commit below (it queues for the lock behind this batch anyway).
            prepared.written.set_result(True)
            async with self._reporting:
                metrics.INGEST_BATCH_SECONDS.observe(time.perf_counter() - started)
                self.positions.update(prepared.next_offsets)
                for p, t in prepared.newest.items():
                    if p not in self.newest or t > self.newest[p]:
                        self.newest[p] = t
                assigned = [tp.partition for tp in consumer.assignment()]
                report.event_time = watermark(
                    assigned,
                    self.newest,
                    self.positions,
                    {
                        p: consumer.highwater(TopicPartition(self.settings.kafka_topic, p))
                        for p in assigned
                    },
                )
                await self._commit_kafka(consumer, prepared.next_offsets)
        finally:
            if not prepared.written.done():  # failed before its COMMIT: the next may not commit
                prepared.written.set_result(False)
            self._writing.discard(task)
        # Conflicting duplicates were dead-lettered, not counted as plain duplicates.
        conflicts = prepared.conflicts + clashes
        report.dead += conflicts
        report.duplicates = prepared.accepted - len(report.counted) - conflicts
        for key, n in (
            ("records", report.records),
            ("counted", len(report.counted)),
            ("duplicates", report.duplicates),
            ("dead", report.dead),
        ):
            self.totals[key] += n
        metrics.INGEST_EVENTS.labels("counted").inc(len(report.counted))
        metrics.INGEST_EVENTS.labels("duplicate").inc(report.duplicates)
        if report.watermark is not None:
            lag = (datetime.now(UTC) - report.watermark).total_seconds()
            metrics.AGGREGATION_LAG.set(max(lag, 0.0))
        # Live counters and SIRA run beside the next batch's write, one batch at a time and in
        # order (waiting here for the previous one is the back-pressure).
        if self._follow_up is not None:
            await self._follow_up
        self._follow_up = asyncio.create_task(self._after_commit(report))
        return report

    async def settle(self) -> None:
        """Wait until no batch is being written (their outcome is commit()'s business)."""
        current = asyncio.current_task()
        pending = [t for t in self._writing if t is not current]
        if pending:
            await asyncio.wait(pending)

    async def drain(self) -> None:
        """Wait for the last batch's SIRA call and bring the live counters up to date."""
        if self._follow_up is not None:
            await self._follow_up
            self._follow_up = None
        await self._refresh_live()

    async def _write(
        self, prepared: PreparedBatch, batch: Summary, after: asyncio.Future[bool] | None
    ) -> Summary:
        async def conflicting(txn_ids: list[str]) -> None:
            prepared.conflicts = await self._conflicting(prepared, txn_ids)

        async def write(conn: Any) -> Summary:
            prepared.conflicts = 0  # found again by a retried attempt
            await self.writer.ensure_partitions(conn, hours(batch))
            return await self.writer.write(conn, batch, prepared.next_offsets, after, conflicting)

        return await self._retry_db("writing a batch", write)

    async def _conflicting(self, prepared: PreparedBatch, txn_ids: list[str]) -> int:
        """Dead-letter the batch's copies of transactions counted before with other content
        (conflicting duplicates: in the ledger, or in the batch still writing before this one)
        and wait until the broker has them, before this batch's COMMIT (a crash meets them
        again); how many transactions."""
        wanted = set(txn_ids)
        letters: list[_Letter] = []
        for records in prepared.source.values():
            for rec in records:
                if type(rec) is UnreadableRecords or rec.value is None:
                    continue
                try:
                    txn_id = _txn_id_of(rec.value).txn_id
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if txn_id in wanted:
                    exc = InvalidEvent(
                        "conflicting_duplicate",
                        f"txn_id {txn_id!r} is already counted with other content;"
                        " the first copy stays counted",
                    )
                    letters.append(self._dead_letter(rec, exc, prepared.now))
        log.warning(
            "%d conflicting duplicate(s) (txn_id counted before with other content) sent to %s",
            len(letters), self.settings.dlq_topic,
        )  # fmt: skip
        await self._deliver_letters(letters, [])
        return len(txn_ids)

    async def _retry_db(self, doing: str, call: Callable[[Any], Awaitable[T]]) -> T:
        """``call`` with a pooled connection until PostgreSQL lets it finish: while it is down,
        restarting or read-only, the batch stays in memory and the call is tried again
        (``health.postgres`` says so). Nothing of a failed attempt was committed."""
        outage = self.health.postgres
        while True:
            try:
                async with self.pool.acquire() as conn:
                    result = await call(conn)
            except _RETRYABLE_DB as exc:
                outage.failed(exc, doing)
                await asyncio.sleep(outage.delay())
                continue
            outage.recovered()
            return result

    async def _log_range(
        self, tps: list[TopicPartition], consumer: AIOKafkaConsumer
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Each partition's log start and end (ListOffsets), asked until the broker answers."""
        if not tps:
            return {}, {}
        outage = self.health.kafka
        while True:
            try:
                starts = await consumer.beginning_offsets(tps)
                ends = await consumer.end_offsets(tps)
            except (KafkaError, OSError) as exc:
                outage.failed(exc, "asking for the partitions' log range")
                await asyncio.sleep(outage.delay())
                continue
            outage.recovered()
            return (
                {tp.partition: offset for tp, offset in starts.items()},
                {tp.partition: offset for tp, offset in ends.items()},
            )

    async def _read_log_end(self, tp: TopicPartition, reported: int, stored: int) -> int:
        """The end of ``tp``'s log read from its records, from the batch ListOffsets LATEST
        points at on (some brokers report that batch's base offset + 1 as the end); reading
        stops once it reaches ``stored`` (then nothing is lost)."""
        reader = AIOKafkaConsumer(
            **client_options(self.settings), client_id=CLIENT_ID, enable_auto_commit=False
        )
        await reader.start()
        try:
            reader.assign([tp])
            if reported > 0:
                reader.seek(tp, reported - 1)
            else:
                await reader.seek_to_beginning(tp)
            end = reported
            for _ in range(READ_END_CALLS):
                got = await reader.getmany(tp, timeout_ms=READ_END_WAIT_MS)
                if not got.get(tp):
                    break
                end = max(end, got[tp][-1].offset + 1)
                if end >= stored:
                    break
            return end
        finally:
            await reader.stop()

    async def _deliver(self, prepared: PreparedBatch) -> None:
        await self._deliver_letters(prepared.letters, prepared.dead_letters)
        prepared.dead_letters = []

    async def _deliver_letters(
        self, letters: list[_Letter], sent: list[asyncio.Future[Any]]
    ) -> None:
        """Wait until the broker holds ``letters`` (``sent``: their deliveries under way, if
        any), sending them again while it is away (a copy twice in the DLQ is allowed; a
        letter lost is not)."""
        outage = self.health.kafka
        while True:
            try:
                if not sent:
                    sent = await self._send_dead_letters(letters)
                await asyncio.gather(*sent)
            except KafkaError as exc:
                outage.failed(exc, "delivering dead letters")
                sent = []
                await asyncio.sleep(outage.delay())
                continue
            outage.recovered()
            return

    def _maybe_probe(self, consumer: AIOKafkaConsumer) -> None:
        if self._probe is not None and not self._probe.done():
            return
        if time.monotonic() - self._heard_at < KAFKA_PROBE_SECONDS:
            return
        self._heard_at = time.monotonic()
        self._probe = asyncio.create_task(self._probe_kafka(consumer))

    async def _probe_kafka(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the broker for metadata: an idle consumer learns whether it is there at all."""
        try:
            await asyncio.wait_for(consumer.topics(), KAFKA_PROBE_SECONDS)
        except (KafkaError, OSError, TimeoutError) as exc:
            self.health.kafka.failed(exc, "idle: asking the broker for metadata")
        else:
            self.health.kafka.recovered()

    async def _out_of_range(self, consumer: AIOKafkaConsumer, exc: OffsetOutOfRangeError) -> None:
        """A fetch refused as out of range: the log lost what the offset points at or past."""
        offsets = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        assigned = consumer.assignment()
        tps = [tp for tp in offsets if tp in assigned]
        if not tps:
            return
        # The batches under way write their offsets first, so that a reset is the last word.
        await self.settle()
        try:
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
        except (KafkaError, OSError) as err:
            self.health.kafka.failed(err, "asking for the log range after an out-of-range fetch")
            return  # fetched again, refused again, asked again
        lost = [
            OffsetLoss(tp.topic, tp.partition, int(offsets[tp]), starts[tp], ends[tp]) for tp in tps
        ]
        if not await self._offsets_lost(consumer, lost):
            consumer.pause(*tps)

    async def _offsets_lost(self, consumer: AIOKafkaConsumer, lost: list[OffsetLoss]) -> bool:
        """Report offsets found outside their log and apply INGEST_OFFSET_LOSS_POLICY; whether
        the partitions may be read on (reset: from their log start)."""
        policy = self.settings.ingest_offset_loss_policy
        for loss in lost:
            metrics.INGEST_OFFSET_LOSS.labels(loss.kind).inc()
            if loss.lost:
                metrics.INGEST_OFFSETS_SKIPPED.inc(loss.lost)
            self.health.offset_lost(loss.report(policy))
            log.error("offsets lost: %s (INGEST_OFFSET_LOSS_POLICY=%s)", loss.describe(), policy)
        if policy == "stop":
            self.fatal = OffsetsLost(
                f"{lost[0].describe()}; {len(lost)} partition(s) so; stopping"
                " (INGEST_OFFSET_LOSS_POLICY=stop; reset reads them again from the log start)"
            )
            return False
        s = self.settings
        starts = {loss.partition: loss.start for loss in lost}
        await self._retry_db(
            "resetting lost offsets",
            lambda conn: reset_offsets(conn, s.kafka_consumer_group, s.kafka_topic, starts),
        )
        for loss in lost:
            tp = TopicPartition(loss.topic, loss.partition)
            consumer.seek(tp, loss.start)
            self._next[tp] = self.positions[loss.partition] = loss.start
        log.error(
            "offsets reset to the log start: %s (re-read exactly once: the ledger skips what was"
            " counted)",
            ", ".join(f"{s.kafka_topic}[{p}] -> {o}" for p, o in sorted(starts.items())),
        )
        return True

    async def _commit_kafka(self, consumer: AIOKafkaConsumer, next_offsets: dict[int, int]) -> None:
        # Best effort: PostgreSQL already holds the truth; this copy feeds lag tools.
        topic = self.settings.kafka_topic
        assigned = consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(offset, "")
            for partition, offset in next_offsets.items()
            if (tp := TopicPartition(topic, partition)) in assigned
        }
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), KAFKA_COMMIT_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            log.info("Kafka offset commit skipped: %r", exc)

    async def _after_commit(self, report: BatchReport) -> None:
        if not len(report.counted):
            return
        if self.live is not None:
            self._live_due |= merchants_on(report.counted, datetime.now(UTC).date())
            if time.monotonic() - self._live_at >= self.live_interval:
                await self._refresh_live()
        if self.detector is not None:
            merchants = report.counted.merchants()
            try:
                if report.event_time is not None:  # None: some partition's progress unknown
                    await self.detector.on_batch(merchants, report.event_time)
            except Exception:
                # Anomaly detection is advisory: it must never stop ingestion.
                log.exception("SIRA detector failed on a batch")
                metrics.SIRA_FAILURES.inc()

    def _maybe_trim(self) -> None:
        """Start deleting expired ledger rows when retention is on and it is time."""
        days = self.settings.ledger_retention_days
        if not days or (self._trimming is not None and not self._trimming.done()):
            return
        if time.monotonic() - self._trimmed_at < ledger.TRIM_EVERY_SECONDS:
            return
        self._trimmed_at = time.monotonic()
        self._trimming = asyncio.create_task(self.trim_ledger())

    async def trim_ledger(self) -> None:
        before = ledger.trim_before(datetime.now(UTC), self.settings.ledger_retention_days)
        try:
            n = await ledger.trim(self.pool, before)
        except _RETRYABLE_DB as exc:
            log.warning("ledger retention: trim failed, tried again later: %r", exc)
            return
        except Exception:
            # Housekeeping: a bug here must not stop ingestion (nor vanish with its task).
            log.exception("ledger retention: trim failed, tried again later")
            return
        metrics.LEDGER_TRIMMED.inc(n)
        if n:
            log.info("ledger retention: %d row(s) of transactions before %s deleted", n, before)

    async def _refresh_live(self) -> None:
        if self.live is None or not self._live_due:
            return
        due, self._live_due = self._live_due, set()
        self._live_at = time.monotonic()
        try:
            await self.live.refresh(self.pool, due)
        except (RedisError, OSError, *_RETRYABLE_DB) as exc:
            self._live_due |= due  # tried again at the next refresh
            log.warning("live counters not updated: %r", exc)
        except Exception:
            # Best effort as well: a bug here must not stop the aggregates.
            self._live_due |= due
            log.exception("live counters not updated")
        self.live_interval = live_interval(time.monotonic() - self._live_at)

    def _observe(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = self.positions.get(tp.partition)
            if high is not None and pos is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(high - pos, 0))
        metrics.observe_pool(self.pool)
