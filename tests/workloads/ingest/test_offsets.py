"""Stored offsets against a partition's log: which are outside it, and how each is reported."""

from __future__ import annotations

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from helpers.ingest import Stack, make_events, publish

from molam_workloads.core.db import create_pool
from molam_workloads.core.errors import ExitCode
from molam_workloads.core.events import encode_event
from molam_workloads.core.settings import load_settings
from molam_workloads.ingest.consumer import Ingestor
from molam_workloads.ingest.offsets import OffsetsLost, outside_log
from molam_workloads.ingest.settings import IngestSettings


def test_only_offsets_outside_the_log_are_reported() -> None:
    stored = {0: 50, 1: 300, 2: 120, 3: 0, 4: 7}
    starts = {0: 80, 1: 0, 2: 0, 3: 0}  # 4: not asked (not assigned here)
    ends = {0: 200, 1: 120, 2: 120, 3: 0}
    lost = outside_log("w", stored, starts, ends)
    assert [(x.partition, x.kind, x.lost) for x in lost] == [
        (0, "before_start", 30),
        (1, "past_end", None),
    ]
    assert "offsets 50..79 were deleted before they were read" in lost[0].describe()
    assert "stored offset 300 is past the log end (120, start 0)" in lost[1].describe()
    report = lost[1].report("reset")
    assert (report["kind"], report["stored"], report["log_end"], report["policy"]) == (
        "past_end", 300, 120, "reset",
    )  # fmt: skip


def test_stopping_on_lost_offsets_has_its_own_exit_code() -> None:
    assert OffsetsLost("x").exit_code == ExitCode.OFFSETS_INCONSISTENT == 4


async def test_a_fetch_out_of_range_resets_to_the_log_start_and_is_reported(
    stack: Stack, db: asyncpg.Connection
) -> None:
    # Kafka refuses a fetch past the log's end with OFFSET_OUT_OF_RANGE (Tansu answers with
    # nothing, so the error is handed in here as aiokafka raises it): the consumer looks at
    # the log, reports the loss, and with the reset policy reads the partition from its start.
    events = make_events(30, seed=91)
    await publish(stack.bootstrap, stack.topic, [encode_event(e) for e in events])
    settings = load_settings(IngestSettings)
    tp = TopicPartition(stack.topic, 0)
    await db.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
        " VALUES ($1, $2, 0, 500)",
        settings.kafka_consumer_group,
        stack.topic,
    )
    async with create_pool(settings, max_size=2) as pool:
        ingestor = Ingestor(settings, pool, producer=None, live=None)  # type: ignore[arg-type]
        consumer = ingestor.new_consumer()
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, 500)
            await ingestor._out_of_range(consumer, OffsetOutOfRangeError({tp: 500}))
            assert await consumer.position(tp) == 0
        finally:
            await consumer.stop()
    (loss,) = ingestor.health.offset_loss
    assert (loss["kind"], loss["stored"], loss["log_start"], loss["policy"]) == (
        "past_end", 500, 0, "reset",
    )  # fmt: skip
    assert ingestor.health.snapshot()["status"] == "offsets_lost"
    stored = await db.fetchval(
        "SELECT next_offset FROM consumer_offsets WHERE topic = $1", stack.topic
    )
    assert stored == 0  # moved back, against the forward-only rule, on purpose
