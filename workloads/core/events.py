"""The transaction event (SPEC §4): decoding and validation of one Kafka message value.

``decode_event`` is on the consumer's hot path: one ``json.loads`` (numbers as ``Decimal``), a
hand-written check of the usual, well-formed event, and a few business checks. Anything the
hand-written check is not certain about (a type, a time format, whitespace to strip...) goes
through the pydantic model instead, which stays the single definition of what is valid and
of every error message: the fast path only ever accepts what the model accepts, with the same
values. Every rejection raises ``InvalidEvent`` with a short machine-friendly ``reason`` (the
DLQ and ``analytics_ingest_errors_total{reason=...}`` use it) and a human ``detail``.
"""

from __future__ import annotations

import json
import re
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
        d = Decimal((v if type(v) is str else str(v)).strip())
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


# One decoder for every event: ``json.loads(raw, parse_float=Decimal)`` would build a new one
# per call. JSON numbers with a fraction or exponent become Decimal, exactly as written.
_DECODER = json.JSONDecoder(parse_float=Decimal)
_FIELDS = frozenset(TransactionEvent.model_fields)
_TYPES = {t.value: t for t in TxnType}
_STATUSES = {s.value: s for s in TxnStatus}
# The canonical RFC 3339 form producers send; any other spelling is left to pydantic.
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
# A plain decimal string that ``_money`` would accept as it is (no sign, no exponent, at most
# MAX_MONEY_EXPONENT places, below MAX_MONEY): Decimal() alone gives the same value.
_PLAIN_MONEY = re.compile(
    f"[0-9]{{1,{len(str(int(MAX_MONEY))) - 1}}}(?:\\.[0-9]{{1,{MAX_MONEY_EXPONENT}}})?"
)
_PLAIN = _PLAIN_MONEY.fullmatch
_NO_FEE = "0"
_new_event = TransactionEvent.__new__
_setattr = object.__setattr__


def _loads(raw: bytes | bytearray | str) -> Any:
    """``json.loads(raw, parse_float=Decimal)`` with a shared decoder (its very steps)."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
        return _DECODER.decode(raw)
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def _ident(v: Any, most: int) -> bool:
    # Already stripped (pydantic strips a subset of what str.strip does) and of a valid length.
    return type(v) is str and 0 < len(v) <= most and v.strip() == v


def _fast(obj: dict[str, Any]) -> TransactionEvent | None:
    """The event, when ``obj`` is plainly valid for the model; None when in any doubt.

    Must accept only what ``TransactionEvent.model_validate`` accepts, with equal values (the
    tests compare both on every case): when it returns None, the model decides.
    """
    get = obj.get
    event_id, txn_id, merchant_id = get("event_id"), get("txn_id"), get("merchant_id")
    occurred_at, currency, country = get("occurred_at"), get("currency"), get("country")
    channel, type_, status = get("channel"), get("type"), get("status")
    if not (
        _ident(event_id, 128)
        and _ident(txn_id, 128)
        and (merchant_id is None or _ident(merchant_id, 128))
        and _ident(channel, 64)
        and type(currency) is str
        and len(currency) == 3
        and type(country) is str
        and len(country) == 2
        and country.isascii()
        and country.isalpha()
        and type(type_) is str
        and type(status) is str
        and type(occurred_at) is str
        and _TIMESTAMP.fullmatch(occurred_at)
    ):
        return None
    kind, state = _TYPES.get(type_), _STATUSES.get(status)
    if kind is None or state is None:
        return None
    try:
        at = datetime.fromisoformat(occurred_at).astimezone(UTC)
        amount, fee = obj["amount"], obj.get("fee", _NO_FEE)
        amount = Decimal(amount) if type(amount) is str and _PLAIN(amount) else _money(amount)
        fee = Decimal(fee) if type(fee) is str and _PLAIN(fee) else _money(fee)
    except (KeyError, ValueError):
        return None
    fields_set = set(_FIELDS)
    if "merchant_id" not in obj:
        fields_set.discard("merchant_id")
    if "fee" not in obj:
        fields_set.discard("fee")
    # What ``model_construct`` does, without its per-field lookups: the values are validated.
    ev = _new_event(TransactionEvent)
    _setattr(
        ev,
        "__dict__",
        {
            "event_id": event_id,
            "txn_id": txn_id,
            "merchant_id": merchant_id,
            "occurred_at": at,
            "amount": amount,
            "currency": currency.upper(),
            "country": country.upper(),
            "channel": channel,
            "type": kind,
            "status": state,
            "fee": fee,
        },
    )
    _setattr(ev, "__pydantic_fields_set__", fields_set)
    _setattr(ev, "__pydantic_extra__", None)
    _setattr(ev, "__pydantic_private__", None)
    return ev


def _validate(obj: dict[str, Any]) -> TransactionEvent:
    try:
        return TransactionEvent.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        kind = "missing_field" if err["type"] == "missing" else "invalid_field"
        raise InvalidEvent(kind, f"{field}: {err['msg']}") from None


def decode_event(raw: bytes | None, now: datetime | None = None) -> TransactionEvent:
    """Parse and validate one message value; raise ``InvalidEvent`` on anything malformed."""
    if raw is None:
        raise InvalidEvent("empty", "message has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        # parse_float=Decimal keeps "amount": 12345678901234.5678 exact; a float would not.
        obj = _loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidEvent("not_json", "value is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_json", "value is not a JSON object")
    ev = _fast(obj) or _validate(obj)
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
