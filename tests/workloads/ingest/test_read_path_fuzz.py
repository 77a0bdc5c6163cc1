"""Mutated and hostile bytes through the consumer's read path: the compiled summary, the Python
decoder and the DLQ. Every record is counted or dead-lettered, and nothing raises.

Bounded: a fixed number of examples each (hypothesis), a few seconds in all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from helpers.ingest import Stack, make_events
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from molam_workloads.core.db import create_pool
from molam_workloads.core.events import (
    EARLIEST_EVENT,
    MAX_CLOCK_SKEW,
    InvalidEvent,
    decode_event,
    encode_event,
)
from molam_workloads.core.settings import load_settings
from molam_workloads.ingest.aggregation import Summary, micros
from molam_workloads.ingest.consumer import Ingestor
from molam_workloads.ingest.settings import IngestSettings

VALID = [encode_event(e) for e in make_events(6, seed=41, span=timedelta(hours=1))]
VALID += [json.dumps(json.loads(v), separators=(",", ":")).encode() for v in VALID[:3]]
# Valid spellings the compiled reader leaves to the model: an escape, case, padding.
VALID += [
    VALID[3].replace(b'"T-41-3"', b'"\\u0054-41-3"'),
    VALID[4].replace(b'"GHS"', b'"ghs"'),
    VALID[5].replace(b'"channel": "', b'"channel": "  '),
]

# Values put in place of one field's value (raw JSON text).
FIELD_VALUES = [
    b"1e99999999999999999999", b"-1e-99999999999999999999", b"NaN", b"-Infinity", b"9" * 5000,
    b'"1e99999999999999999999"', b'"NaN"', b'"\\u0000"', b'"a\x00b"', b'"\\ud800"', b'"\xff"',
    b'"' + b"x" * 10_000 + b'"', b"[" * 3000 + b"]" * 3000, b"[" * 40 + b"]" * 40, b"{}",
    b'"2999-01-01T00:00:00Z"', b'"10000-01-01T00:00:00Z"', b'"0000-01-01T00:00:00Z"',
    b'"2025-02-29T00:00:00Z"', b'"9999-12-31T23:59:59.999999+14:00"', b"null", b"true", b"-0",
    b"0.00001", b"100000000000000000000", b'"1', b"", b"1,", b'"A", "amount": "2"',
]  # fmt: skip
FIELDS = [b"event_id", b"txn_id", b"merchant_id", b"occurred_at", b"amount", b"currency",
          b"country", b"channel", b"type", b"status", b"fee", b"extra"]  # fmt: skip
# Whole values.
HOSTILE = [b"[" * 6000, b'{"a":' * 3000, b"\x00" * 64, b"", b"{}", b"null", b"\xff\xfe",
           b'{"x": NaN}', VALID[0][:-1], VALID[0] + b"x", b" " * 70_000]  # fmt: skip


def _with_field(value: bytes, field: bytes, new: bytes) -> bytes:
    """``value`` with ``field``'s value replaced by ``new`` (or added when absent)."""
    doc = json.loads(value)
    doc[field.decode()] = "@@"
    return json.dumps(doc).encode().replace(b'"@@"', new)


def _one_of(values: list[bytes]) -> st.SearchStrategy[bytes]:
    # By index: hypothesis then shows the strategy without its (huge) values.
    return st.integers(0, len(values) - 1).map(values.__getitem__)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    value = draw(_one_of(VALID))
    for _ in range(draw(st.integers(1, 2))):
        field, new = draw(st.sampled_from(FIELDS)), draw(_one_of(FIELD_VALUES))
        try:
            value = _with_field(value, field, new)
        except (ValueError, RecursionError):  # the previous step already broke the JSON
            break
    data = bytearray(value)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "cut", "repeat"]))
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(max_size=6))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 20))]
        else:  # a stretch of the value again, e.g. a field twice
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


VALUES = st.one_of(_one_of(VALID), mutated(), _one_of(HOSTILE), st.binary(max_size=300), st.none())


def _verdict(value: bytes | None, now: datetime) -> bool:
    """decode_event's own verdict (True: valid); it raises nothing but InvalidEvent."""
    try:
        decode_event(value, now)
    except InvalidEvent:
        return False
    return True


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(VALUES, max_size=12))
def test_compiled_reader_and_decoder_take_any_bytes(values: list[bytes | None]) -> None:
    now = datetime.now(UTC)
    lo, hi = micros(EARLIEST_EVENT), micros(now + MAX_CLOCK_SKEW)
    summary = Summary()
    i = 0
    while i < len(values):
        stop, _ = summary.feed(values, i, len(values), lo, hi)
        assert i <= stop <= len(values)
        for taken in values[i:stop]:
            assert _verdict(taken, now), taken  # the compiled reader takes only valid events
        if stop < len(values):
            # What it leaves, the model decides without raising (valid or not).
            event(f"left to the model: {'valid' if _verdict(values[stop], now) else 'invalid'}")
        event(f"taken by the compiled reader: {'some' if stop > i else 'none'}")
        i = stop + 1


@pytest.fixture
async def ingestor(stack: Stack) -> AsyncIterator[Ingestor]:
    """The consumer's batch logic with its real DLQ producer (``prepare`` needs no consumer)."""
    s = load_settings(IngestSettings)
    async with create_pool(s, max_size=1) as pool:
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers)
        await producer.start()
        try:
            yield Ingestor(s, pool, producer, None)
        finally:
            await producer.stop()


def _record(topic: str, offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=None,
        value=value, checksum=None, serialized_key_size=-1,
        serialized_value_size=-1 if value is None else len(value), headers=(),
    )  # fmt: skip


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(values=st.lists(VALUES, min_size=1, max_size=40))
async def test_every_record_is_counted_or_dead_lettered(
    ingestor: Ingestor, values: list[bytes | None]
) -> None:
    topic = ingestor.settings.kafka_topic
    records = [_record(topic, i, v) for i, v in enumerate(values)]
    prepared = await ingestor.prepare({TopicPartition(topic, 0): records})
    valid = sum(_verdict(v, prepared.now) for v in values)
    event(f"counted: {bool(valid)}, dead-lettered: {valid < len(values)}")
    assert (prepared.records, prepared.accepted, prepared.dead) == (
        len(values),
        valid,
        len(values) - valid,
    )
    assert prepared.next_offsets == {0: len(values)}
    # commit() waits for these before the offsets move: the dead letters reach the broker (as
    # few record batches).
    delivered = await asyncio.gather(*prepared.dead_letters)
    assert 0 < len(delivered) <= prepared.dead if prepared.dead else not delivered
