"""Pure batch aggregation: transaction events -> additive rows of txn_hourly_agg / txn_minute_agg.

No I/O here, so the arithmetic that decides every figure on the dashboard is unit-tested alone.
A bucket is (time bucket, merchant, country, currency, channel); its measures (``core.measures``,
which backfill's SQL computes too) are sums, so a batch's rows can be *added* to what PostgreSQL
already holds (``ON CONFLICT DO UPDATE``). Summing here, on the consumer's core, leaves
PostgreSQL's core the work only it can do (the ledger, the upserts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

import msgspec

from molam_workloads.core.events import TransactionEvent, TxnStatus, TxnType
from molam_workloads.core.measures import MEASURES, MONEY_MEASURES

BucketKey = tuple[datetime, str | None, str, str, str]

_IDX = {name: i for i, name in enumerate(MEASURES)}
_STATUS_IDX = {s: _IDX[f"{s.value}_count"] for s in TxnStatus}
_TYPE_IDX = {t: (_IDX[f"{t.value}_count"], _IDX[f"{t.value}_volume_local"]) for t in TxnType}
_TX, _GROSS, _FEE = _IDX["tx_count"], _IDX["gross_volume_local"], _IDX["fee_local"]
_ZERO = Decimal(0)


def truncate_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def truncate_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def dedupe(events: Iterable[TransactionEvent]) -> list[TransactionEvent]:
    """First event of each ``txn_id`` (a producer retry inside one batch counts once)."""
    seen: dict[str, TransactionEvent] = {}
    for ev in events:
        seen.setdefault(ev.txn_id, ev)
    return list(seen.values())


_ZERO_ROW: tuple[Any, ...] = tuple(_ZERO if m in MONEY_MEASURES else 0 for m in MEASURES)


def _zero_row() -> list[Any]:
    return list(_ZERO_ROW)


def aggregate(
    events: Iterable[TransactionEvent], bucket: Callable[[datetime], datetime]
) -> dict[BucketKey, list[Any]]:
    """Sum the measures of ``events`` per bucket; values are in ``MEASURES`` order.

    ``bucket`` truncates a UTC time to its hour or minute (``truncate_hour``/``_minute``).

    ``tx_count`` and ``gross_volume_local`` count every transaction whatever its type and
    status (they reconcile with ``wallet_transactions``); the per-type measures and fees count
    succeeded transactions only, as the schema documents.
    """
    # Per event only a count and two sums, per (bucket, status, type); the few groups are then
    # spread over the measures. Decimal sums are exact, so the order of additions is irrelevant.
    groups: dict[tuple[Any, ...], list[Any]] = {}
    get = groups.get
    # ``bucket`` (an hour or a minute) depends on the minute alone: computed once per minute of
    # the batch, found by an integer key that costs a quarter of ``datetime.replace``.
    buckets: dict[int, datetime] = {}
    for ev in events:
        ts = ev.occurred_at
        minute = ts.toordinal() * 1440 + ts.hour * 60 + ts.minute
        at = buckets.get(minute)
        if at is None:
            at = buckets[minute] = bucket(ts)
        key = (
            at,
            ev.merchant_id,
            ev.country,
            ev.currency,
            ev.channel,
            ev.status,
            ev.type,
        )
        acc = get(key)
        if acc is None:
            groups[key] = [1, ev.amount, ev.fee]
        else:
            acc[0] += 1
            acc[1] += ev.amount
            acc[2] += ev.fee
    rows: dict[BucketKey, list[Any]] = {}
    for (at, merchant, country, currency, channel, status, kind), (
        n,
        amount,
        fee,
    ) in groups.items():
        bucket_key = (at, merchant, country, currency, channel)
        row = rows.get(bucket_key)
        if row is None:
            row = rows[bucket_key] = _zero_row()
        row[_TX] += n
        row[_GROSS] += amount
        row[_STATUS_IDX[status]] += n
        if status is TxnStatus.succeeded:
            count_i, volume_i = _TYPE_IDX[kind]
            row[count_i] += n
            row[volume_i] += amount
            row[_FEE] += fee
    return rows


_encode = msgspec.json.Encoder().encode


def rows_json(rows: dict[BucketKey, list[Any]]) -> bytes:
    """The rows as one JSON array of [5 key columns, then ``MEASURES``] arrays, in key order.

    In key order: two consumers upserting overlapping buckets then lock them in the same order,
    which keeps them from deadlocking each other. One JSON document rather than a parameter
    array per column: asyncpg inspects every array element for nesting, which costs more than
    encoding the whole batch with msgspec (Decimal as its exact text, times in RFC 3339).
    """
    return _encode([(*k, *rows[k]) for k in sorted(rows, key=_sort_key)])


def _sort_key(key: BucketKey) -> tuple[datetime, bool, str, str, str, str]:
    ts, merchant, country, currency, channel = key
    return (ts, merchant is None, merchant or "", country, currency, channel)


def recent(events: Sequence[TransactionEvent], since: datetime | None) -> list[TransactionEvent]:
    """The events at or after ``since`` (all of them when ``since`` is None)."""
    if since is None:
        return list(events)
    return [ev for ev in events if ev.occurred_at >= since]


def months(instants: Iterable[datetime]) -> set[datetime]:
    """First instant (UTC) of every month of ``instants``: the partitions they need."""
    return {t.replace(day=1, hour=0, minute=0, second=0, microsecond=0) for t in instants}


def horizon(now: datetime, hours: int) -> datetime | None:
    return now - timedelta(hours=hours) if hours > 0 else None


def subtract(
    rows: dict[BucketKey, list[Any]], minus: dict[BucketKey, list[Any]]
) -> dict[BucketKey, list[Any]]:
    """``rows`` less ``minus`` (a new dict; ``rows`` is left as it was). Buckets whose count
    drops to zero disappear: they only held what was taken away."""
    out = dict(rows)
    for key, less in minus.items():
        row = [a - b for a, b in zip(out[key], less, strict=True)]
        if row[_TX]:
            out[key] = row
        else:
            del out[key]
    return out


@dataclass
class BatchAggregates:
    """A batch's transactions (unique by ``txn_id``) and their sums per hour and minute.

    Computed while the previous batch is being written, on the assumption that every
    transaction is new; the few the ledger rejects are then subtracted (``without``), which is
    far cheaper than aggregating again. The JSON documents the write sends are computed once,
    as text (asyncpg's jsonb parameter takes str), by ``encoded`` off the event loop.
    """

    events: list[TransactionEvent]
    hourly: dict[BucketKey, list[Any]]
    minute: dict[BucketKey, list[Any]]
    minute_since: datetime | None

    @cached_property
    def hourly_json(self) -> str:
        return rows_json(self.hourly).decode()

    @cached_property
    def minute_json(self) -> str:
        return rows_json(self.minute).decode()

    @cached_property
    def ledger_json(self) -> str:
        """[txn_id, event_id, occurred_at] of every event, for the ledger insert."""
        return _encode([(e.txn_id, e.event_id, e.occurred_at) for e in self.events]).decode()

    def encoded(self) -> BatchAggregates:
        """This batch with its three JSON documents computed (in the caller's thread)."""
        _ = (self.ledger_json, self.hourly_json, self.minute_json)  # reading caches them
        return self

    def without(self, dropped: Sequence[TransactionEvent]) -> BatchAggregates:
        if not dropped:
            return self
        gone = {ev.txn_id for ev in dropped}
        return BatchAggregates(
            [ev for ev in self.events if ev.txn_id not in gone],
            subtract(self.hourly, aggregate(dropped, truncate_hour)),
            subtract(self.minute, aggregate(recent(dropped, self.minute_since), truncate_minute)),
            self.minute_since,
        )


def summarize(events: Iterable[TransactionEvent], minute_since: datetime | None) -> BatchAggregates:
    """Dedupe a batch by ``txn_id`` and aggregate it per hour and per minute (since ``since``).

    One pass over the events: recent ones are summed per minute and their minute rows rolled
    up into hours (there are far fewer minute rows than events in live traffic); older ones
    go straight to their hour.
    """
    unique = dedupe(events)
    recent_events: list[TransactionEvent] = unique
    older: list[TransactionEvent] = []
    if minute_since is not None:
        recent_events = []
        for ev in unique:
            (recent_events if ev.occurred_at >= minute_since else older).append(ev)
    minute = aggregate(recent_events, truncate_minute)
    hourly = aggregate(older, truncate_hour)
    for (at, merchant, country, currency, channel), row in minute.items():
        key = (at.replace(minute=0), merchant, country, currency, channel)
        total = hourly.get(key)
        if total is None:
            hourly[key] = list(row)
        else:
            for i, v in enumerate(row):
                total[i] += v
    return BatchAggregates(unique, hourly, minute, minute_since)
