"""The blocks of the kept merchant rankings (``core.ranks``): which blocks cover a range."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from molam_workloads.core import ranks


@given(
    first=st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 1, 1)),
    days=st.integers(min_value=0, max_value=20_000),
)
def test_blocks_cover_a_range_exactly_with_few_aligned_blocks(first: date, days: int) -> None:
    """Consecutive blocks from the first day to the end, each 2^k days (k <= LEVELS) starting
    on a multiple of its size after the epoch, at most two of a size below the largest, in all
    at most two per level plus the whole multiples of the largest."""
    end = first + timedelta(days=days)
    blocks = ranks.blocks(first, end)
    at = first
    sizes = []
    for lo, hi in blocks:
        assert lo == at
        size = (hi - lo).days
        assert size & (size - 1) == 0 and size <= 1 << ranks.LEVELS
        assert (lo - ranks.EPOCH).days % size == 0
        sizes.append(size)
        at = hi
    assert at == end or (days == 0 and not blocks)
    largest = 1 << ranks.LEVELS
    assert all(sizes.count(s) <= 2 for s in set(sizes) if s < largest)
    assert len(blocks) <= 2 * ranks.LEVELS + days // largest + 1


def test_a_candidate_depth_grows_with_the_limit_where_merchants_outnumber_it() -> None:
    many = 10**6
    assert ranks.depth(1, many) == 100
    assert ranks.depth(12, many) == 100
    assert ranks.depth(20, many) == 160
    assert ranks.depth(ranks.SIZE // 2, many) == ranks.SIZE
    assert ranks.depth(ranks.SIZE // 2 + 1, many) is None
    assert ranks.depth(10, ranks.PAYS_OFF * 100) == 100
    assert ranks.depth(10, ranks.PAYS_OFF * 100 - 1) is None
