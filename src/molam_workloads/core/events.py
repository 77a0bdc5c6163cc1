"""The transaction event (docs/events.md): decoding and validation of one Kafka message value.

``decode_event`` is on the consumer's hot path: msgspec decodes the usual, well-formed event
straight into typed fields (in C; money as exact ``Decimal``, never a float) and a few checks
finish what the model would check. Anything the fast path is not certain about (a type, a time
format, whitespace to strip...) goes through ``json.loads`` and the pydantic model instead,
which stays the single definition of what is valid and of every error message: the fast path
only ever accepts what the model accepts, with the same values. Then a few business checks.
Every rejection raises ``InvalidEvent`` with a short machine-friendly ``reason`` (the DLQ and
``analytics_ingest_errors_total{reason=...}`` use it) and a human ``detail``; ``decode_event``
raises nothing else for any value (hostile ones included: deep nesting is ``too_deep``, numbers
beyond the decimal module's range or not JSON's are ``bad_number``, a repeated field is
``duplicate_field``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Self, TypeVar

import msgspec
from pydantic import (
    AfterValidator,
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
# Identifiers (event, transaction, merchant) and labels (channel), in characters.
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 64
_STORAGE_PLACES = Decimal(1).scaleb(-MAX_MONEY_EXPONENT)
# Enough digits for any amount under MAX_MONEY with MAX_MONEY_EXPONENT places: quantizing
# only ever raises Inexact (digits lost), never for lack of precision.
_EXACT = Context(prec=40, traps=[Inexact])
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
    return _bounded(d)


def _bounded(d: Decimal) -> Decimal:
    """``d`` if storage can hold it exactly; ValueError (the model's message) otherwise.

    Exactly: with at most MAX_MONEY_EXPONENT places once trailing zeros are dropped
    ("125.50000" is 125.5). Checked by quantizing with Inexact trapped, a third of the cost of
    reading the exponent through ``as_tuple`` (which builds a tuple of every digit) on the
    consumer's hot path, where each event has two amounts.
    """
    if not d.is_finite():
        raise ValueError("must be finite")
    if not -MAX_MONEY < d < MAX_MONEY:
        raise ValueError("is too large")
    try:
        _EXACT.quantize(d, _STORAGE_PLACES)
    except Inexact:
        raise ValueError(f"has more than {MAX_MONEY_EXPONENT} decimal places") from None
    return d


def _storable(v: str) -> str:
    # PostgreSQL text cannot hold NUL: accepted, such an event would fail its batch's write
    # on every retry and stop the partition, instead of going to the DLQ.
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


Money = Annotated[Decimal, BeforeValidator(_money)]
Ident = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(_storable),
]
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL_CHARS),
    AfterValidator(_storable),
]


_E = TypeVar("_E", bound=BaseModel)


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

    # The fast path shares one frozenset of field names between its events
    # (docs/decisions/020-event-fields-set.md); copies get a set of their own, which
    # ``model_copy(update=...)`` adds to.
    def __copy__(self) -> Self:
        return _own_fields_set(super().__copy__())

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        return _own_fields_set(super().__deepcopy__(memo))


def _own_fields_set(ev: _E) -> _E:
    object.__setattr__(ev, "__pydantic_fields_set__", set(ev.__pydantic_fields_set__))
    return ev


_FIELDS = frozenset(TransactionEvent.model_fields)
# The canonical RFC 3339 form producers send; any other spelling is left to pydantic.
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
).fullmatch
_new_event = TransactionEvent.__new__
_setattr = object.__setattr__
_ZERO = Decimal(0)

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


class _Canonical(msgspec.Struct):
    """The usual, well-formed event, as msgspec checks it in C (the fast path's first step).

    Stricter than the model where they differ (no whitespace to strip, upper or lower case
    only as the model allows, money as msgspec's exact Decimal), never looser: ``_fast``
    finishes the checks the model makes. A message that does not fit goes to the model.
    """

    event_id: _Id
    txn_id: _Id
    occurred_at: str
    amount: Decimal
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
    country: Annotated[str, msgspec.Meta(min_length=2, max_length=2)]
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_LABEL_CHARS)]
    type: TxnType
    status: TxnStatus
    merchant_id: _Id | msgspec.UnsetType | None = msgspec.UNSET
    fee: Decimal | msgspec.UnsetType = msgspec.UNSET


_decode_canonical = msgspec.json.Decoder(_Canonical).decode
# The event's field names as they appear, quoted, in a raw value (a repeat is ambiguous).
_field_names = re.compile(
    ('"(' + "|".join(sorted(TransactionEvent.model_fields)) + ')"').encode()
).findall
_WITHOUT = {
    (True, True): _FIELDS,
    (False, True): _FIELDS - {"merchant_id"},
    (True, False): _FIELDS - {"fee"},
    (False, False): _FIELDS - {"merchant_id", "fee"},
}


def _fast(raw: bytes | bytearray | str) -> TransactionEvent | None:
    """The event, when ``raw`` is plainly valid for the model; None when in any doubt.

    Must accept only what ``TransactionEvent.model_validate`` accepts, with equal values (the
    tests compare both on every case): when it returns None, the model decides.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    # msgspec keeps the last of repeated fields; the model refuses them (see _slow). An
    # escaped name could hide a repeat, so any backslash goes to the model too.
    if b"\\" in data:
        return None
    names = _field_names(data)
    if len(names) != len(set(names)):
        return None
    try:
        c = _decode_canonical(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    merchant_id, fee, country = c.merchant_id, c.fee, c.country
    if not (
        c.event_id.strip() == c.event_id
        and c.txn_id.strip() == c.txn_id
        and c.channel.strip() == c.channel
        and (
            merchant_id is None
            or merchant_id is msgspec.UNSET
            or (merchant_id.strip() == merchant_id and "\x00" not in merchant_id)
        )
        and "\x00" not in c.event_id
        and "\x00" not in c.txn_id
        and "\x00" not in c.channel
        and country.isascii()
        and country.isalpha()
        and _TIMESTAMP(c.occurred_at)
    ):
        return None
    try:
        at = datetime.fromisoformat(c.occurred_at).astimezone(UTC)
        amount = _bounded(c.amount)
        fee_value = _ZERO if fee is msgspec.UNSET else _bounded(fee)
    except ValueError:
        return None
    has_merchant = merchant_id is not msgspec.UNSET
    # What ``model_construct`` does, without its per-field lookups: the values are validated.
    ev = _new_event(TransactionEvent)
    _setattr(
        ev,
        "__dict__",
        {
            "event_id": c.event_id,
            "txn_id": c.txn_id,
            "merchant_id": merchant_id if has_merchant else None,
            "occurred_at": at,
            "amount": amount,
            "currency": c.currency.upper(),
            "country": country.upper(),
            "channel": c.channel,
            "type": c.type,
            "status": c.status,
            "fee": fee_value,
        },
    )
    _setattr(ev, "__pydantic_fields_set__", _WITHOUT[has_merchant, fee is not msgspec.UNSET])
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


class _Repeated(dict[str, Any]):
    """A JSON object in which some name appeared more than once (the last value kept)."""

    names: frozenset[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    again: set[str] = set()
    for name, _ in pairs:
        (again if name in seen else seen).add(name)
    repeated = _Repeated(obj)
    repeated.names = frozenset(again)
    return repeated


# Python's int() refuses more digits than this (ValueError); Decimal has no such limit, and
# a long integer in a field the model ignores is as harmless as it is to the fast readers.
_MAX_INT_DIGITS = 4300


def _int(text: str) -> int | Decimal:
    return int(text) if len(text) <= _MAX_INT_DIGITS else Decimal(text)


def _decimal(text: str) -> Decimal:
    # parse_float=Decimal keeps "amount": 12345678901234.5678 exact; a float would not.
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond the decimal module's limits
        raise InvalidEvent("bad_number", f"number {text[:40]!r} is out of range") from None


def _constant(name: str) -> Any:
    raise InvalidEvent("bad_number", f"{name} is not a JSON number")


def _slow(raw: bytes) -> TransactionEvent:
    """The model's verdict on anything the fast path was not sure of, with its error message."""
    try:
        obj = json.loads(
            raw,
            parse_float=_decimal,
            parse_int=_int,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, InvalidEvent):
            raise
        raise InvalidEvent("not_json", "value is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_json", "value is not a JSON object")
    if isinstance(obj, _Repeated) and obj.names & _FIELDS:
        # Parsers disagree on which copy wins: an amount given twice is no amount at all.
        raise InvalidEvent("duplicate_field", f"repeated: {', '.join(sorted(obj.names & _FIELDS))}")
    return _validate(obj)


def decode_event(raw: bytes | None, now: datetime | None = None) -> TransactionEvent:
    """Parse and validate one message value; raise ``InvalidEvent`` on anything malformed."""
    if raw is None:
        raise InvalidEvent("empty", "message has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        ev = _fast(raw) or _slow(raw)
    except RecursionError:
        # Both parsers recurse per level of nesting; an event is flat.
        raise InvalidEvent("too_deep", "value is nested too deeply") from None
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
