"""Where aiokafka's errors come from: records it cannot unpack are located (partition, offsets)
and named; any other error is left to stop the consumer. Real batches, parsed by aiokafka."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.errors import KafkaConnectionError
from aiokafka.record.memory_records import MemoryRecords
from helpers.ingest import unreadable_batch

from molam_workloads.ingest.consumer import _unreadable_at, _unreadable_reason

TP = TopicPartition("wallet", 3)


def unpacking(batch: bytes) -> Exception:
    """What aiokafka's fetcher raises on reading ``batch`` (as ``getmany`` would)."""
    records = PartitionRecords(TP, MemoryRecords(batch), [], 0, None, None, True, READ_UNCOMMITTED)
    with pytest.raises(Exception) as exc:  # each case says which
        list(records)
    return exc.value


@pytest.mark.parametrize(
    ("damage", "error", "reason"),
    [
        ("garbage_gzip", "BadGzipFile", "unreadable_batch"),
        ("bad_crc", "CorruptRecordException", "corrupt_batch"),
        ("unknown_codec", "UnsupportedCodecError", "unsupported_codec"),
    ],
)
def test_records_aiokafka_cannot_unpack_are_located_and_named(
    damage: str, error: str, reason: str
) -> None:
    exc = unpacking(unreadable_batch([b"a", b"b", b"c"], damage))
    assert type(exc).__name__ == error
    assert _unreadable_at(exc) == (TP, 0, 3)
    assert _unreadable_reason(exc) == reason


def test_other_errors_are_not_taken_for_unreadable_records() -> None:
    try:
        raise KafkaConnectionError("broker gone")
    except KafkaConnectionError as exc:
        assert _unreadable_at(exc) is None
