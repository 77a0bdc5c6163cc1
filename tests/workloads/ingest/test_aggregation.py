"""The batch arithmetic (the compiled ``Summary``), without any service, against the obvious
event-by-event reference."""

from __future__ import annotations

import contextlib
import json
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from molam_workloads.core.events import InvalidEvent, encode_event
from molam_workloads.core.measures import MEASURES
from molam_workloads.ingest.aggregation import (
    Summary,
    add_event,
    horizon,
    hours,
    merchants_on,
    micros,
    months,
    summarize,
)

from .reference import (
    T0,
    assert_mixed_statuses_row,
    dedupe,
    ev,
    m,
    mixed_statuses,
    one_by_one,
    one_per_dimension,
    random_events,
    rows_of,
    truncate_hour,
    truncate_minute,
)

LONG_AGO = T0 - timedelta(days=365)  # a minute horizon that every test event is after


def test_every_transaction_counts_in_tx_count_and_gross_only_succeeded_in_the_splits() -> None:
    row = assert_mixed_statuses_row(rows_of(summarize(mixed_statuses(), None).hourly_json()))
    assert all(isinstance(m(row, x), Decimal) for x in MEASURES if x.endswith("_local"))


def test_buckets_split_by_every_dimension_and_time() -> None:
    batch = summarize(one_per_dimension(), LONG_AGO)
    assert len(rows_of(batch.hourly_json())) == 6
    assert len(rows_of(batch.minute_json())) == 7


def test_minute_rows_from_the_horizon_on_and_all_of_them_without_one() -> None:
    events = one_per_dimension()
    assert len(rows_of(summarize(events, None).minute_json())) == 7
    later = summarize(events, T0 + timedelta(minutes=1))
    # Only the next minute's and the next hour's events are at or after the horizon.
    assert [k[0] for k in rows_of(later.minute_json())] == [
        T0.replace(minute=16, second=0),
        T0.replace(hour=11, second=0),
    ]
    assert len(rows_of(later.hourly_json())) == 6


def test_the_first_event_of_a_transaction_counts() -> None:
    batch = summarize([ev("a"), ev("b"), ev("a")], None)
    # Another content under a taken txn_id is a conflicting duplicate: refused, not counted.
    with pytest.raises(InvalidEvent, match="conflicting_duplicate"):
        add_event(batch, ev("a", amount="999"))
    assert batch.txn_ids() == ["a", "b"]
    (row,) = rows_of(batch.hourly_json()).values()
    assert m(row, "gross_volume_local") == Decimal("201.00")
    assert add_event(batch, ev("b")) is False and add_event(batch, ev("c")) is True


def test_rows_travel_sorted_with_exact_money_and_utc_times() -> None:
    batch = summarize(
        [ev("a", merchant_id="M-2"), ev("b", merchant_id=None, type="transfer"), ev("c")], None
    )
    got = json.loads(batch.hourly_json())
    assert all(len(r) == 5 + len(MEASURES) for r in got)
    assert [r[1] for r in got] == ["M-1", "M-2", None]  # NULL merchant last, a stable lock order
    assert [r[5 + MEASURES.index("tx_count")] for r in got] == [1, 1, 1]
    assert got[0][0] == "2025-07-01T10:00:00Z"
    assert got[0][5 + MEASURES.index("gross_volume_local")] == "100.5000"


def test_rows_are_sorted_by_code_point_as_python_sorts_them() -> None:
    names = ["M-b", "M-a", "M-é", "M-Z", "M-ab", "M-\U0001f600", "M-\u00ff"]
    batch = summarize([ev(str(i), merchant_id=n) for i, n in enumerate(names)], None)
    assert [r[1] for r in json.loads(batch.hourly_json())] == sorted(names)


def test_text_is_escaped_and_times_keep_their_microseconds() -> None:
    odd = ev('q"\\\n\t\u00e9\U0001f600', merchant_id='M "x"', channel="c\\h")
    at = T0.replace(microsecond=120034)
    batch = summarize([odd, ev("b", occurred_at=at)], LONG_AGO)
    ledger = json.loads(batch.ledger_json())
    assert [r[:3] for r in ledger] == [
        [odd.txn_id, odd.event_id, "2025-07-01T10:15:30.000000Z"],
        ["b", "e-b", "2025-07-01T10:15:30.120034Z"],
    ]
    assert all(isinstance(r[3], int) for r in ledger)  # the content hash (a bigint)
    assert {k[1:] for k in rows_of(batch.hourly_json())} == {
        ('M "x"', "SN", "XOF", "c\\h"),
        ("M-1", "SN", "XOF", "mobile_money"),
    }


def test_money_keeps_every_place_up_to_the_largest_amount() -> None:
    big = ev("a", amount="999999999999999.9999", fee="0.0001")
    batch = summarize([big, ev("b", amount="999999999999999.9999"), ev("c", amount="0.0001")], None)
    (row,) = rows_of(batch.hourly_json()).values()
    assert m(row, "gross_volume_local") == Decimal("1999999999999999.9999")
    assert m(row, "fee_local") == Decimal("2.5001")  # 0.0001 + 1.25 + 1.25


def test_months_and_horizon() -> None:
    events = [ev("a"), ev("b", occurred_at=datetime(2024, 12, 31, 23, 59, tzinfo=UTC))]
    got = months(e.occurred_at for e in events)
    assert got == {datetime(2025, 7, 1, tzinfo=UTC), datetime(2024, 12, 1, tzinfo=UTC)}
    assert horizon(T0, 48) == T0 - timedelta(hours=48)
    assert horizon(T0, 0) is None
    assert hours(summarize(events, None)) == {truncate_hour(e.occurred_at) for e in events}


def test_removing_the_ledger_rejects_equals_aggregating_only_the_new() -> None:
    events = [
        ev("a"),
        ev("b", status="failed"),
        ev("c", merchant_id="M-2", occurred_at=T0 - timedelta(days=5)),
        ev("d", type="refund"),
        ev("a"),  # same transaction again: ignored before anything else
    ]
    since = T0 - timedelta(hours=48)
    batch = summarize(events, since)
    assert batch.txn_ids() == ["a", "b", "c", "d"]
    before = (batch.hourly_json(), batch.minute_json(), batch.ledger_json())

    kept = batch.without({"b", "c"})
    fresh = summarize([e for e in dedupe(events) if e.txn_id not in ("b", "c")], since)
    assert kept.hourly_json() == fresh.hourly_json()
    assert kept.minute_json() == fresh.minute_json()
    assert kept.ledger_json() == fresh.ledger_json()
    assert kept.txn_ids() == ["a", "d"] and kept.since_us == micros(since)
    # The M-2 bucket held only a rejected transaction: it is gone, not left at zero.
    assert all(k[1] != "M-2" for k in rows_of(kept.hourly_json()))
    # The prepared batch is untouched (a failed write is retried from it).
    assert (batch.hourly_json(), batch.minute_json(), batch.ledger_json()) == before


def test_without_equals_summing_only_what_is_left() -> None:
    """``without`` takes the dropped transactions' measures away from copies of the groups;
    summing the others from scratch must give the same documents, whatever is dropped."""
    events = random_events(1500, seed=21)
    batch = summarize(events, T0 + timedelta(hours=2))  # minute rows for half of them
    before = (batch.hourly_json(), batch.minute_json())
    rnd = random.Random(4)
    for rate in (0.0, 0.01, 0.3, 0.9, 1.0):
        gone = {e.txn_id for e in events if rnd.random() < rate}
        kept = batch.without(gone)
        fresh = summarize([e for e in events if e.txn_id not in gone], T0 + timedelta(hours=2))
        assert kept.hourly_json() == fresh.hourly_json()
        assert kept.minute_json() == fresh.minute_json()
        assert kept.ledger_json() == fresh.ledger_json()
        assert set(kept.hours()) == set(fresh.hours()) and len(kept) == len(fresh)
        assert (kept is batch) == (not gone)
    assert (batch.hourly_json(), batch.minute_json()) == before
    # Another summary's transactions, as the consumer leaves out the batch before.
    other = summarize(events[:100], None)
    assert batch.without(other).ledger_json() == summarize(events[100:], None).ledger_json()
    # What is left can be summed further, emptied buckets included.
    again = batch.without({e.txn_id for e in events})
    for e in events[:10]:
        add_event(again, e)
    assert again.hourly_json() == summarize(events[:10], None).hourly_json()


def test_sums_equal_the_event_by_event_sums() -> None:
    events = random_events(3000, seed=5) + random_events(300, seed=5)  # the copies count once
    batch = summarize(events, LONG_AGO)
    unique = dedupe(events)
    assert len(batch) == len(unique) == 3000
    for document, bucket in (
        (batch.hourly_json(), truncate_hour),
        (batch.minute_json(), truncate_minute),
    ):
        got, want = rows_of(document), one_by_one(unique, bucket)
        assert got == want


def test_raw_values_and_validated_events_sum_alike() -> None:
    """``feed`` (raw wire values) and ``add_event`` (validated events) give the same summary."""
    events = random_events(2000, seed=9)
    values: list[bytes | None] = [encode_event(e) for e in events]
    fed = Summary(micros(LONG_AGO))
    assert fed.feed(values, 0, len(values), micros(LONG_AGO), micros(T0 + timedelta(days=1))) == (
        len(values),
        max(micros(e.occurred_at) for e in events),
    )
    added = summarize(events, LONG_AGO)
    assert fed.ledger_json() == added.ledger_json()
    assert fed.hourly_json() == added.hourly_json()
    assert fed.minute_json() == added.minute_json()


def test_feed_reads_a_slice_and_stops_at_the_first_value_it_is_not_sure_of() -> None:
    a, b, c = (encode_event(ev(t)) for t in "abc")
    values: list[bytes | None] = [a, b, None, c, b"not json"]
    summary = Summary()
    bounds = (micros(LONG_AGO), micros(T0 + timedelta(days=1)))
    assert summary.feed(values, 1, 5, *bounds) == (2, micros(T0))  # b taken, stops at None
    assert summary.feed(values, 3, 5, *bounds) == (4, micros(T0))  # c taken, stops at the text
    assert summary.feed(values, 0, 1, *bounds) == (1, micros(T0))
    assert summary.feed(values, 4, 4, *bounds) == (4, None)  # an empty slice
    assert summary.txn_ids() == ["b", "c", "a"]


def test_merchants_of_a_day() -> None:
    today = T0.date()
    batch = summarize(
        [ev("a"), ev("b", merchant_id="M-2", occurred_at=T0 - timedelta(days=1)),
         ev("c", merchant_id=None)],
        None,
    )  # fmt: skip
    assert merchants_on(batch, today) == {"M-1", None}
    assert merchants_on(batch, date(2025, 6, 30)) == {"M-2"}
    assert batch.merchants() == {"M-1", "M-2", None}


def test_bad_arguments_are_refused() -> None:
    summary = Summary()
    with pytest.raises(TypeError):
        summary.without(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        summary.add("t", "e", None, "SN", "XOF", "card", 0, 9, 0, 1, 0)
    with pytest.raises(TypeError):
        summary.add("t", "e", 5, "SN", "XOF", "card", 0, 0, 0, 1, 0)  # type: ignore[arg-type]
    assert len(summary) == 0


# The summary's entry points called directly with hostile arguments (ASan and UBSan found the
# first two unchecked): an error, never memory outside the summary's own.
_MIN_AT = micros(datetime(1, 1, 1, tzinfo=UTC))
_MAX_AT = micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))


@pytest.mark.parametrize("at_us", [-(2**63), _MIN_AT - 1, _MAX_AT + 1, 2**63 - 1])
def test_add_refuses_instants_outside_years_1_to_9999(at_us: int) -> None:
    summary = Summary()
    with pytest.raises(ValueError, match="at_us out of range"):
        summary.add("t", "e", None, "SN", "XOF", "card", at_us, 0, 0, 1, 0)
    assert len(summary) == 0 and summary.hourly_json() == "[]"


def test_add_takes_the_first_and_last_instants_it_can_write() -> None:
    summary = Summary()
    assert summary.add("t1", "e", None, "SN", "XOF", "card", _MIN_AT, 0, 0, 1, 0)
    assert summary.add("t2", "e", None, "SN", "XOF", "card", _MAX_AT, 0, 0, 1, 0)
    times = [r[2] for r in json.loads(summary.ledger_json())]
    assert times == ["0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z"]


@pytest.mark.parametrize(
    ("amount", "fee", "error"),
    [(-1, 0, OverflowError), (0, -1, OverflowError), (2**64, 0, OverflowError),
     (10**19, 0, ValueError), (1, 10**19, ValueError), (1.5, 0, TypeError), ("1", 0, TypeError)],
)  # fmt: skip
def test_add_refuses_money_outside_what_an_event_can_hold(
    amount: object, fee: object, error: type[Exception]
) -> None:
    summary = Summary()
    with pytest.raises(error):
        summary.add("t", "e", None, "SN", "XOF", "card", micros(T0), 0, 0, amount, fee)  # type: ignore[arg-type]
    assert len(summary) == 0


class _Sly(str):
    """A txn id whose hash and equality run Python code inside the summary's set lookups."""

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)


def test_add_refuses_str_subclasses() -> None:
    summary = Summary()
    with pytest.raises(TypeError):
        summary.add(_Sly("t"), "e", None, "SN", "XOF", "card", micros(T0), 0, 0, 1, 0)
    with pytest.raises(TypeError):
        summary.add("t", "e", _Sly("M"), "SN", "XOF", "card", micros(T0), 0, 0, 1, 0)
    assert len(summary) == 0


class _Flip(str):
    """Equal to its txn id in without()'s first pass only: the pass that sized the copy saw
    every transaction dropped, the second keeps them all."""

    calls = 0
    first_pass = 0

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        _Flip.calls += 1
        return _Flip.calls <= _Flip.first_pass and str.__eq__(self, other)


def test_without_checks_its_capacity_when_the_second_pass_keeps_more() -> None:
    events = random_events(600, seed=5)
    batch = summarize(events, LONG_AGO)
    _Flip.calls, _Flip.first_pass = 0, len(batch)
    kept = batch.without({_Flip(t) for t in batch.txn_ids()})
    # Nothing was taken away in the end: the copy holds every transaction and every measure.
    assert kept.txn_ids() == batch.txn_ids()
    assert kept.hourly_json() == batch.hourly_json()
    assert kept.ledger_json() == batch.ledger_json()


class _Grows(str):
    """Adds transactions to the summary being filtered from inside its lookups (its records
    move in memory meanwhile)."""

    target: Summary | None = None
    added = 0

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        if _Grows.target is not None and _Grows.added < 3000:
            for _ in range(500):
                _Grows.added += 1
                _Grows.target.add(
                    f"G-{_Grows.added}", "e", None, "SN", "XOF", "card", micros(T0), 0, 0, 1, 0
                )
        return str.__eq__(self, other)


def test_without_survives_a_summary_growing_under_it() -> None:
    batch = summarize(random_events(50, seed=6), LONG_AGO)
    ids = batch.txn_ids()
    _Grows.target, _Grows.added = batch, 0
    try:
        with contextlib.suppress(AssertionError):  # a record added midway has no group copied
            kept = batch.without({_Grows(t) for t in ids[:10]})
            assert len(kept) >= len(ids) - 10
    finally:
        _Grows.target = None
    assert len(batch) == len(ids) + _Grows.added
