"""The transaction event (SPEC §4): decoding and validation of one Kafka message value.

``decode_event`` is on the consumer's hot path: one pydantic-core JSON parse plus a few checks.
Every rejection raises ``InvalidEvent`` with a short machine-friendly ``reason`` (the DLQ and
``analytics_ingest_errors_total{reason=...}`` use it) and a human ``detail``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from molam_workloads.core.currencies import CURRENCIES

MAX_EVENT_BYTES = 64 * 1024
# Money has at most 4 decimal places in storage (numeric(20,4)); more would be silently rounded.
MAX_MONEY_EXPONENT = 4
MAX_MONEY = Decimal("1e15")
# Events far in the future are clock bugs; far in the past would create absurd partitions.
MAX_CLOCK_SKEW = timedelta(days=1)
EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)


class TxnType(StrEnum):
    payment = "payment"
    refund = "refund"
    payout = "payout"
    transfer = "transfer"


class TxnStatus(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    pending = "pending"


class InvalidEvent(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _money(v: Any) -> Decimal:
    # bool is an int subclass and floats lose cents: JSON numbers arrive here as Decimal
    # (decode_event parses them with parse_float=Decimal), never as float.
    if isinstance(v, bool | float) or v is None:
        raise ValueError("must be a decimal string or number")
    try:
        d = Decimal(str(v).strip())
    except Exception:
        raise ValueError("must be a decimal string or number") from None
    if not d.is_finite():
        raise ValueError("must be finite")
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp < -MAX_MONEY_EXPONENT:
        raise ValueError(f"has more than {MAX_MONEY_EXPONENT} decimal places")
    if abs(d) >= MAX_MONEY:
        raise ValueError("is too large")
    return d


Money = Annotated[Decimal, BeforeValidator(_money)]
Ident = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class TransactionEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Ident
    txn_id: Ident
    merchant_id: Ident | None = None
    occurred_at: datetime
    amount: Money
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)]
    country: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
    channel: Label
    type: TxnType
    status: TxnStatus
    fee: Money = Field(default=Decimal(0))

    @field_validator("currency", "country")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a time zone (e.g. 2025-07-01T10:15:00Z)")
        return v.astimezone(UTC)


def decode_event(raw: bytes | None, now: datetime | None = None) -> TransactionEvent:
    """Parse and validate one message value; raise ``InvalidEvent`` on anything malformed."""
    if raw is None:
        raise InvalidEvent("empty", "message has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        # parse_float=Decimal keeps "amount": 12345678901234.5678 exact; a float would not.
        obj = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent("not_json", "value is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_json", "value is not a JSON object")
    try:
        ev = TransactionEvent.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        kind = "missing_field" if err["type"] == "missing" else "invalid_field"
        raise InvalidEvent(kind, f"{field}: {err['msg']}") from None
    if ev.currency not in CURRENCIES:
        raise InvalidEvent("unknown_currency", f"currency {ev.currency!r} is not ISO 4217")
    if ev.amount <= 0:
        raise InvalidEvent("non_positive_amount", f"amount {ev.amount} must be > 0")
    if ev.fee < 0:
        raise InvalidEvent("invalid_field", f"fee {ev.fee} must be >= 0")
    now = now or datetime.now(UTC)
    if ev.occurred_at > now + MAX_CLOCK_SKEW:
        raise InvalidEvent("invalid_field", "occurred_at is more than a day in the future")
    if ev.occurred_at < EARLIEST_EVENT:
        raise InvalidEvent("invalid_field", "occurred_at is before 2000-01-01")
    return ev


def encode_event(ev: TransactionEvent) -> bytes:
    """The wire form (money as decimal strings), as a producer should publish it."""
    return ev.model_dump_json().encode()
