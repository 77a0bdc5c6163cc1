"""The synthetic market is realistic enough and always valid (pure, no services)."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from molam_workloads.core.events import decode_event
from molam_workloads.jobs.traffic import (
    HOURLY_RHYTHM,
    Market,
    Spike,
    history_times,
    merchants,
    rhythm_at,
)


def test_merchant_sizes_follow_a_long_tail() -> None:
    roster = merchants(100, random.Random(1))
    weights = [m.weight for m in roster]
    assert abs(sum(weights) - 1) < 1e-9
    assert weights == sorted(weights, reverse=True)
    assert sum(weights[:10]) > 0.4  # the ten largest carry a big share
    assert len({m.currency for m in roster}) >= 4 and len({m.country for m in roster}) >= 5


def test_every_generated_event_is_valid_with_money_as_strings() -> None:
    rnd = random.Random(2)
    market = Market(merchants(20, rnd), rnd, "t")
    now = datetime.now(UTC)
    docs = [market.transaction(now - timedelta(seconds=i)) for i in range(3000)]
    for doc in docs:
        assert isinstance(doc["amount"], str) and isinstance(doc["fee"], str)
        decode_event(json.dumps(doc).encode())
    kinds = Counter(d["type"] for d in docs)
    statuses = Counter(d["status"] for d in docs)
    assert kinds["payment"] > kinds["refund"] > 0 and kinds["transfer"] > 0
    assert statuses["succeeded"] > statuses["failed"] > statuses["pending"] > 0
    assert any(d["merchant_id"] is None for d in docs)  # wallet-to-wallet transfers
    assert len({d["txn_id"] for d in docs}) == len(docs)
    xof = [d["amount"] for d in docs if d["currency"] == "XOF"]
    assert xof and all("." not in a for a in xof)  # XOF has no minor unit


def test_history_times_are_exact_ordered_in_range_and_follow_the_day() -> None:
    end = datetime(2025, 7, 10, 0, 0, tzinfo=UTC)
    start = end - timedelta(days=5)
    times = list(history_times(20000, start, end, random.Random(3)))
    assert len(times) == 20000
    assert times == sorted(times) and start <= times[0] and times[-1] < end
    by_hour = Counter(t.hour for t in times)
    quiet, busy = HOURLY_RHYTHM.index(min(HOURLY_RHYTHM)), HOURLY_RHYTHM.index(max(HOURLY_RHYTHM))
    assert by_hour[busy] > 5 * by_hour[quiet]


def test_spike_windows() -> None:
    t0 = datetime(2025, 7, 1, tzinfo=UTC)
    once = Spike("M-1", 10, t0, t0 + timedelta(minutes=5))
    assert once.active(t0) and not once.active(t0 + timedelta(minutes=5))
    again = Spike("M-1", 10, t0, t0 + timedelta(minutes=5), timedelta(minutes=15))
    assert again.active(t0 + timedelta(minutes=31)) and not again.active(t0 + timedelta(minutes=40))


def test_rhythm_at_averages_one_over_a_day() -> None:
    day = datetime(2026, 12, 7, tzinfo=UTC)
    factors = [rhythm_at(day + timedelta(hours=h)) for h in range(24)]
    assert sum(factors) / 24 == pytest.approx(1.0)
    assert factors[19] == max(factors) and factors[2] < 0.1 * factors[19]
