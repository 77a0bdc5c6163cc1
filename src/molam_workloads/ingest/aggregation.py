"""Batch aggregation: transaction events -> additive rows of txn_hourly_agg / txn_minute_agg.

The arithmetic is the compiled ``Summary`` (``_summary.c``): it dedupes a batch by ``txn_id``
(first event wins) and sums the measures of ``core.measures`` per bucket, as exact integers of
storage's smallest unit of money, for every transaction whatever its source:

- ``Summary.feed`` reads raw Kafka values itself when they are plainly valid (the consumer's
  hot path) and stops at the first it is not sure of;
- ``add_event`` adds an event that ``core.events.decode_event`` validated (the rest).

A bucket is (time bucket, merchant, country, currency, channel); its measures are sums, so a
batch's rows can be *added* to what PostgreSQL already holds (``ON CONFLICT DO UPDATE``).
Summing here, on the consumer's core, leaves PostgreSQL's core the work only it can do.
Times cross into the summary as integer microseconds since the epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from molam_workloads.core.currencies import CURRENCIES
from molam_workloads.core.events import (
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_MONEY,
    MAX_MONEY_EXPONENT,
    InvalidEvent,
    TransactionEvent,
    TxnStatus,
    TxnType,
)
from molam_workloads.core.measures import MEASURES, MONEY_MEASURES
from molam_workloads.ingest import _summary
from molam_workloads.ingest._summary import Summary

__all__ = [
    "Summary",
    "add_event",
    "from_micros",
    "horizon",
    "hours",
    "merchants_on",
    "micros",
    "months",
    "summarize",
]

_STATUSES = tuple(TxnStatus)
_TYPES = tuple(TxnType)
# Everything the compiled reader checks comes from core.events and core.measures: the limits
# are not written again in C.
_summary.configure(
    MEASURES,
    MONEY_MEASURES,
    tuple(s.value for s in _STATUSES),
    tuple(t.value for t in _TYPES),
    frozenset(CURRENCIES),
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_MONEY.adjusted(),  # digits before the point: amounts are < 10**that
    MAX_MONEY_EXPONENT,
)
_STATUS_INDEX = {s: i for i, s in enumerate(_STATUSES)}
_TYPE_INDEX = {t: i for i, t in enumerate(_TYPES)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(ts: datetime) -> int:
    """Microseconds since the epoch of an aware time (exact: integer arithmetic)."""
    return (ts - _EPOCH) // _MICROSECOND


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _units(amount: Decimal) -> int:
    """Money in the summary's units, those of storage (10**-MAX_MONEY_EXPONENT). Exact: a
    validated event's money has at most that many places (core.events._bounded)."""
    units = amount.scaleb(MAX_MONEY_EXPONENT)
    if units != units.to_integral_value():
        raise ValueError(f"{amount} has more than {MAX_MONEY_EXPONENT} decimal places")
    return int(units)


# Summary.add's answer for a copy of a transaction already taken with other content.
CONFLICTING = 2


def add_event(summary: Summary, ev: TransactionEvent) -> bool:
    """Add a validated event; False when its transaction was already in the summary with the
    same content. Another content raises InvalidEvent ``conflicting_duplicate`` (the first
    copy stays counted)."""
    got = summary.add(
        ev.txn_id,
        ev.event_id,
        ev.merchant_id,
        ev.country,
        ev.currency,
        ev.channel,
        micros(ev.occurred_at),
        _STATUS_INDEX[ev.status],
        _TYPE_INDEX[ev.type],
        _units(ev.amount),
        _units(ev.fee),
    )
    if got == CONFLICTING:
        raise InvalidEvent(
            "conflicting_duplicate",
            f"txn_id {ev.txn_id!r} came before in this batch with other content;"
            " the first copy is counted",
        )
    return bool(got)


def summarize(events: Iterable[TransactionEvent], minute_since: datetime | None) -> Summary:
    """Validated events, deduped by ``txn_id`` and summed per hour, and per minute from
    ``minute_since`` on (None: every event has its minute row)."""
    summary = Summary(None if minute_since is None else micros(minute_since))
    for ev in events:
        add_event(summary, ev)
    return summary


def hours(summary: Summary) -> set[datetime]:
    """The hours of a summary's hourly rows."""
    return {from_micros(us) for us in set(summary.hours())}


def merchants_on(summary: Summary, day: date) -> set[str | None]:
    """Merchants with transactions in the summary on ``day`` (UTC)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return summary.merchants(micros(start), micros(start + timedelta(days=1)))


def months(instants: Iterable[datetime]) -> set[datetime]:
    """First instant (UTC) of every month of ``instants``: the partitions they need."""
    return {t.replace(day=1, hour=0, minute=0, second=0, microsecond=0) for t in instants}


def horizon(now: datetime, hours: int) -> datetime | None:
    return now - timedelta(hours=hours) if hours > 0 else None
