"""Pure batch aggregation: transaction events -> additive rows of txn_hourly_agg / txn_minute_agg.

No I/O here, so the arithmetic that decides every figure on the dashboard is unit-tested alone.
A bucket is (time bucket, merchant, country, currency, channel); its measures are sums, so a
batch's rows can be *added* to what PostgreSQL already holds (``ON CONFLICT DO UPDATE``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from molam_workloads.core.events import TransactionEvent, TxnStatus, TxnType

BucketKey = tuple[datetime, str | None, str, str, str]

# Column order of the measures, shared by the aggregation and the SQL that writes it.
MEASURES: tuple[str, ...] = (
    "tx_count",
    "succeeded_count",
    "failed_count",
    "pending_count",
    "gross_volume_local",
    "payment_count",
    "payment_volume_local",
    "refund_count",
    "refund_volume_local",
    "payout_count",
    "payout_volume_local",
    "transfer_count",
    "transfer_volume_local",
    "fee_local",
)
MONEY_MEASURES = frozenset(m for m in MEASURES if m.endswith("_local"))
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

    ``tx_count`` and ``gross_volume_local`` count every transaction whatever its type and
    status (they reconcile with ``wallet_transactions``); the per-type measures and fees count
    succeeded transactions only, as the schema documents.
    """
    # Per event only a count and two sums, per (bucket, status, type); the few groups are then
    # spread over the measures. Decimal sums are exact, so the order of additions is irrelevant.
    groups: dict[tuple[Any, ...], list[Any]] = {}
    get = groups.get
    for ev in events:
        key = (
            bucket(ev.occurred_at),
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


def columns(rows: dict[BucketKey, list[Any]]) -> list[list[Any]]:
    """Column arrays (5 key columns, then ``MEASURES``) for one ``unnest`` insert.

    Rows come out in key order: two consumers upserting overlapping buckets then lock them in
    the same order, which keeps them from deadlocking each other. Money columns are the exact
    decimal text of each sum (``str(Decimal)``, cast back to numeric by the SQL): encoding
    Decimal values in binary costs the driver about four times more CPU than text.
    """
    keys = sorted(rows, key=_sort_key)
    cols: list[list[Any]] = [[k[i] for k in keys] for i in range(5)]
    values = [rows[k] for k in keys]
    cols.extend(
        [str(v[i]) for v in values] if name in MONEY_MEASURES else [v[i] for v in values]
        for i, name in enumerate(MEASURES)
    )
    return cols


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
    far cheaper than aggregating again.
    """

    events: list[TransactionEvent]
    hourly: dict[BucketKey, list[Any]]
    minute: dict[BucketKey, list[Any]]
    minute_since: datetime | None
    _columns: dict[str, list[list[Any]]] = field(default_factory=dict, repr=False)

    def hourly_columns(self) -> list[list[Any]]:
        if "hourly" not in self._columns:
            self._columns["hourly"] = columns(self.hourly)
        return self._columns["hourly"]

    def minute_columns(self) -> list[list[Any]]:
        if "minute" not in self._columns:
            self._columns["minute"] = columns(self.minute)
        return self._columns["minute"]

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
