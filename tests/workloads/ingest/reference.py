"""Hand-made events and the obvious event-by-event sums, the reference for the aggregation."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from molam_workloads.core.events import TransactionEvent
from molam_workloads.core.measures import MEASURES

T0 = datetime(2025, 7, 1, 10, 15, 30, tzinfo=UTC)
Rows = dict[tuple[Any, ...], list[Any]]


def ev(txn: str, **kw: object) -> TransactionEvent:
    base: dict[str, object] = {
        "event_id": f"e-{txn}",
        "txn_id": txn,
        "merchant_id": "M-1",
        "occurred_at": T0,
        "amount": "100.50",
        "currency": "XOF",
        "country": "SN",
        "channel": "mobile_money",
        "type": "payment",
        "status": "succeeded",
        "fee": "1.25",
    }
    return TransactionEvent.model_validate(base | kw)


def truncate_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def truncate_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def dedupe(events: Iterable[TransactionEvent]) -> list[TransactionEvent]:
    """The first event of each ``txn_id``."""
    seen: dict[str, TransactionEvent] = {}
    for e in events:
        seen.setdefault(e.txn_id, e)
    return list(seen.values())


def rows_of(document: str) -> Rows:
    """A summary's rows document (``hourly_json()``/``minute_json()``) as the reference's dict:
    (bucket, merchant, country, currency, channel) -> measures, money as Decimal."""
    rows: Rows = {}
    for r in json.loads(document):
        key = (datetime.fromisoformat(r[0]), *r[1:5])
        assert key not in rows, f"bucket twice: {key}"
        rows[key] = [
            Decimal(v) if name.endswith("_local") else v
            for name, v in zip(MEASURES, r[5:], strict=True)
        ]
    return rows


def m(row: list[Any], name: str) -> Any:
    return row[MEASURES.index(name)]


def mixed_statuses() -> list[TransactionEvent]:
    """A succeeded payment, a failed and a pending one and a succeeded refund, in one bucket."""
    return [
        ev("a"),
        ev("b", status="failed", amount="7"),
        ev("c", status="pending", amount="3"),
        ev("d", type="refund", amount="10", fee="0"),
    ]


def one_per_dimension() -> list[TransactionEvent]:
    """``ev("a")`` and six events that each differ from it in one bucket dimension: no merchant,
    country, currency (with its country), channel, the next hour, the next minute."""
    return [
        ev("a"),
        ev("b", merchant_id=None, type="transfer"),
        ev("c", country="CI"),
        ev("d", currency="GHS", country="GH"),
        ev("e", channel="card"),
        ev("f", occurred_at=T0 + timedelta(hours=1)),
        ev("g", occurred_at=T0 + timedelta(minutes=1)),
    ]


def assert_mixed_statuses_row(rows: Rows) -> list[Any]:
    """``mixed_statuses``' one hourly row, computed by hand: every transaction counts in
    ``tx_count`` and the gross, only succeeded ones in the per-type splits and the fees."""
    assert len(rows) == 1
    ((key, row),) = rows.items()
    assert key == (T0.replace(minute=0, second=0), "M-1", "SN", "XOF", "mobile_money")
    assert m(row, "tx_count") == 4
    assert m(row, "gross_volume_local") == Decimal("120.50")
    assert (m(row, "succeeded_count"), m(row, "failed_count"), m(row, "pending_count")) == (2, 1, 1)
    assert (m(row, "payment_count"), m(row, "payment_volume_local")) == (1, Decimal("100.50"))
    assert (m(row, "refund_count"), m(row, "refund_volume_local")) == (1, Decimal("10"))
    assert m(row, "fee_local") == Decimal("1.25")
    return row


def one_by_one(events: list[TransactionEvent], bucket: Callable[[datetime], datetime]) -> Rows:
    """The measures summed event by event, the obvious way."""
    rows: Rows = {}
    for e in events:
        key = (bucket(e.occurred_at), e.merchant_id, e.country, e.currency, e.channel)
        row = rows.setdefault(key, [Decimal(0) if n.endswith("_local") else 0 for n in MEASURES])
        row[MEASURES.index("tx_count")] += 1
        row[MEASURES.index("gross_volume_local")] += e.amount
        row[MEASURES.index(f"{e.status.value}_count")] += 1
        if e.status.value == "succeeded":
            row[MEASURES.index(f"{e.type.value}_count")] += 1
            row[MEASURES.index(f"{e.type.value}_volume_local")] += e.amount
            row[MEASURES.index("fee_local")] += e.fee
    return rows


def random_events(n: int, seed: int) -> list[TransactionEvent]:
    """``n`` events over four hours, every dimension, type and status mixed, money to 4 places."""
    rnd = random.Random(seed)
    return [
        ev(
            f"t{i}",
            occurred_at=T0 + timedelta(seconds=rnd.randrange(4 * 3600)),
            merchant_id=rnd.choice(["M-1", "M-2", None]),
            country=rnd.choice(["SN", "CI"]),
            channel=rnd.choice(["card", "wallet"]),
            type=rnd.choice(["payment", "refund", "payout", "transfer"]),
            status=rnd.choice(["succeeded", "failed", "pending"]),
            amount=f"{rnd.randrange(1, 10**6)}.{rnd.randrange(10**4):04d}",
            fee=rnd.choice(["0", "1.5", "0.0001", "12"]),
        )
        for i in range(n)
    ]
