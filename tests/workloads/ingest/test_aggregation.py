"""The pure batch arithmetic, without any service."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from molam_workloads.core.measures import MEASURES
from molam_workloads.ingest.aggregation import (
    aggregate,
    dedupe,
    horizon,
    months,
    recent,
    rows_json,
    summarize,
    truncate_hour,
    truncate_minute,
)

from .reference import (
    T0,
    assert_mixed_statuses_row,
    ev,
    m,
    mixed_statuses,
    one_by_one,
    one_per_dimension,
    random_events,
)


def test_every_transaction_counts_in_tx_count_and_gross_only_succeeded_in_the_splits() -> None:
    row = assert_mixed_statuses_row(aggregate(mixed_statuses(), truncate_hour))
    assert all(isinstance(m(row, x), Decimal) for x in MEASURES if x.endswith("_local"))


def test_buckets_split_by_every_dimension_and_time() -> None:
    events = one_per_dimension()
    assert len(aggregate(events, truncate_hour)) == 6
    assert len(aggregate(events, truncate_minute)) == 7


def test_dedupe_keeps_the_first_event_of_a_transaction() -> None:
    out = dedupe([ev("a"), ev("b"), ev("a", amount="999")])
    assert [e.txn_id for e in out] == ["a", "b"]
    assert out[0].amount == Decimal("100.50")


def test_rows_travel_sorted_with_exact_money_and_utc_times() -> None:
    rows = aggregate(
        [ev("a", merchant_id="M-2"), ev("b", merchant_id=None, type="transfer"), ev("c")],
        truncate_hour,
    )
    got = json.loads(rows_json(rows))
    assert all(len(r) == 5 + len(MEASURES) for r in got)
    assert [r[1] for r in got] == ["M-1", "M-2", None]  # NULL merchant last, a stable lock order
    assert [r[5 + MEASURES.index("tx_count")] for r in got] == [1, 1, 1]
    assert got[0][0] == "2025-07-01T10:00:00Z"
    assert got[0][5 + MEASURES.index("gross_volume_local")] == "100.50"


def test_months_and_horizon() -> None:
    events = [ev("a"), ev("b", occurred_at=datetime(2024, 12, 31, 23, 59, tzinfo=UTC))]
    got = months(e.occurred_at for e in events)
    assert got == {datetime(2025, 7, 1, tzinfo=UTC), datetime(2024, 12, 1, tzinfo=UTC)}
    since = horizon(T0, 48)
    assert since == T0 - timedelta(hours=48)
    assert [e.txn_id for e in recent(events, since)] == ["a"]
    assert horizon(T0, 0) is None and len(recent(events, None)) == 2


def test_removing_the_ledger_rejects_equals_aggregating_only_the_new() -> None:
    events = [
        ev("a"),
        ev("b", status="failed"),
        ev("c", merchant_id="M-2", occurred_at=T0 - timedelta(days=5)),
        ev("d", type="refund"),
        ev("a", amount="1"),  # same transaction again: ignored before anything else
    ]
    since = T0 - timedelta(hours=48)
    batch = summarize(events, since)
    assert [e.txn_id for e in batch.events] == ["a", "b", "c", "d"]
    before = (dict(batch.hourly), dict(batch.minute), batch.hourly_json)

    rejected = [e for e in batch.events if e.txn_id in ("b", "c")]
    kept = batch.without(rejected)
    fresh = summarize([e for e in batch.events if e.txn_id not in ("b", "c")], since)
    assert kept.hourly == fresh.hourly and kept.minute == fresh.minute
    assert kept.hourly_json == fresh.hourly_json
    assert [e.txn_id for e in kept.events] == ["a", "d"]
    # The M-2 bucket held only a rejected transaction: it is gone, not left at zero.
    assert all(k[1] != "M-2" for k in kept.hourly)
    # The prepared batch is untouched (a failed write is retried from it).
    assert (batch.hourly, batch.minute, batch.hourly_json) == before
    assert batch.without([]) is batch


def test_aggregate_equals_the_event_by_event_sums() -> None:
    events = random_events(3000, seed=5)
    for bucket in (truncate_hour, truncate_minute):
        got, want = aggregate(events, bucket), one_by_one(events, bucket)
        assert got == want
        assert {k: [str(v) for v in r] for k, r in got.items()} == {
            k: [str(v) for v in r] for k, r in want.items()
        }
