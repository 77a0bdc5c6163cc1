"""The event-time watermark handed to SIRA: how far event time has certainly progressed.

A batch's newest event is not enough: while a backlog replays, one partition can run hours ahead
of another, and a bucket judged on the fast partition's time would miss the slow one's events
for it (then never be judged again). So, as stream processors do, the watermark is the minimum
over the partitions that still have records to deliver of the newest event time each delivered;
a partition read to its end does not hold time back (it is idle, not late).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime


def watermark(
    newest: Mapping[int, datetime], positions: Mapping[int, int], ends: Mapping[int, int | None]
) -> datetime | None:
    """``newest``: partition -> newest event time consumed; ``positions``: next offset to read;
    ``ends``: the partition's end offset (None when not known yet, i.e. treated as behind)."""
    if not newest:
        return None
    behind = [
        t for p, t in newest.items() if (end := ends.get(p)) is None or positions.get(p, 0) < end
    ]
    return min(behind) if behind else max(newest.values())
