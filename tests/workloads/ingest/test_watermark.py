"""The event-time watermark: slowest partition still behind, newest once all are caught up."""

from __future__ import annotations

from datetime import UTC, datetime

from molam_workloads.ingest.watermark import watermark

T = [datetime(2025, 7, 1, h, tzinfo=UTC) for h in range(24)]


def test_no_events_no_watermark() -> None:
    assert watermark([], {}, {}, {}) is None
    assert watermark([0], {}, {0: 0}, {0: 0}) is None  # an empty partition, nothing consumed


def test_the_slowest_partition_still_behind_holds_time_back() -> None:
    # Partition 0 replays a backlog (at 02:00 of event time), partition 1 is at 09:00.
    assert watermark([0, 1], {0: T[2], 1: T[9]}, {0: 10, 1: 500}, {0: 400, 1: 600}) == T[2]


def test_a_partition_read_to_its_end_does_not_hold_time_back() -> None:
    assert watermark([0, 1], {0: T[2], 1: T[9]}, {0: 400, 1: 500}, {0: 400, 1: 600}) == T[9]


def test_all_caught_up_gives_the_newest_event_time() -> None:
    assert watermark([0, 1], {0: T[2], 1: T[9]}, {0: 400, 1: 600}, {0: 400, 1: 600}) == T[9]


def test_unknown_end_counts_as_behind() -> None:
    assert watermark([0, 1], {0: T[2], 1: T[9]}, {0: 400, 1: 600}, {0: None, 1: 600}) == T[2]


def test_a_partition_with_records_left_but_none_delivered_holds_everything() -> None:
    # The first batch came from partition 0 only; partition 1 has a backlog not yet read.
    assert watermark([0, 1], {0: T[9]}, {0: 600}, {0: 600, 1: 300}) is None
    assert watermark([0, 1], {0: T[9]}, {0: 600}, {0: 600, 1: None}) is None


def test_an_empty_partition_does_not_hold_time_back() -> None:
    assert watermark([0, 1], {0: T[9]}, {0: 500}, {0: 600, 1: 0}) == T[9]
