"""The event-time watermark handed to SIRA: how far event time has certainly progressed.

A batch's newest event is not enough: while a backlog replays, one partition can run hours ahead
of another, and a bucket judged on the fast partition's time would miss the slow one's events
for it (then never be judged again). So, as stream processors do, the watermark is the minimum
over the assigned partitions that still have records to deliver of the newest event time each
delivered. A partition read to its end does not hold time back (it is idle, not late); one that
has records left but delivered none yet holds it back entirely (its progress is unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime


def watermark(
    assigned: Iterable[int],
    newest: Mapping[int, datetime],
    positions: Mapping[int, int],
    ends: Mapping[int, int | None],
) -> datetime | None:
    """``newest``: partition -> newest event time consumed; ``positions``: next offset to read;
    ``ends``: each partition's end offset (None when not known yet: treated as behind).
    None means "not known yet": judge nothing."""
    held: list[datetime] = []
    for p in assigned:
        end = ends.get(p)
        if end is not None and positions.get(p, 0) >= end:
            continue  # read to its end
        if p not in newest:
            return None  # records left, none delivered yet
        held.append(newest[p])
    if held:
        return min(held)
    return max(newest.values()) if newest else None
