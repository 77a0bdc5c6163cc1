"""decode_event: what a valid event is, and the reason given for each kind of malformed one."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from molam_workloads.core.currencies import CURRENCIES
from molam_workloads.core.events import (
    EARLIEST_EVENT,
    MAX_CLOCK_SKEW,
    MAX_EVENT_BYTES,
    InvalidEvent,
    TransactionEvent,
    _fast,
    decode_event,
)
from molam_workloads.ingest.aggregation import Summary, add_event, micros

NOW = datetime(2025, 7, 2, tzinfo=UTC)


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "txn_id": "T-100",
        "merchant_id": "M-42",
        "occurred_at": "2025-07-01T10:15:00Z",
        "amount": "125.50",
        "currency": "XOF",
        "country": "SN",
        "channel": "mobile_money",
        "type": "payment",
        "status": "succeeded",
        "fee": "1.25",
    }
    base.update(over)
    return base


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_valid_event_keeps_money_exact() -> None:
    ev = decode_event(raw(event()), now=NOW)
    assert ev.amount == Decimal("125.50") and ev.fee == Decimal("1.25")
    assert ev.occurred_at == datetime(2025, 7, 1, 10, 15, tzinfo=UTC)


def test_json_numbers_are_parsed_without_float_rounding() -> None:
    ev = decode_event(
        b'{"event_id":"e","txn_id":"t","occurred_at":"2025-07-01T10:15:00Z",'
        b'"amount":12345678901234.5678,"currency":"usd","country":"sn",'
        b'"channel":"card","type":"refund","status":"failed"}',
        now=NOW,
    )
    assert ev.amount == Decimal("12345678901234.5678")
    assert ev.currency == "USD" and ev.country == "SN" and ev.merchant_id is None
    assert ev.fee == 0


def test_money_needs_at_most_four_places_once_trailing_zeros_are_dropped() -> None:
    # Storage is numeric(20,4): "125.50000" is 125.5 exactly, "1.00001" would be rounded.
    for amount, fee in (("125.50000", "1.250000"), ("1E+2", "0.00010")):
        ev = decode_event(raw(event(amount=amount, fee=fee)), now=NOW)
        assert (ev.amount, ev.fee) == (Decimal(amount), Decimal(fee))
    for amount in ("1.00001", "125.500001", "0.00005"):
        with pytest.raises(InvalidEvent, match="more than 4 decimal places"):
            decode_event(raw(event(amount=amount)), now=NOW)
    with pytest.raises(InvalidEvent, match="too large"):
        decode_event(raw(event(amount="1000000000000000.0")), now=NOW)


def test_offset_timestamps_are_normalised_to_utc() -> None:
    ev = decode_event(raw(event(occurred_at="2025-07-01T12:15:00+02:00")), now=NOW)
    assert ev.occurred_at == datetime(2025, 7, 1, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_json"),
        (None, "empty"),
        (b"x" * (MAX_EVENT_BYTES + 1), "oversized"),
        (raw({k: v for k, v in event().items() if k != "txn_id"}), "missing_field"),
        (raw(event(amount=True)), "invalid_field"),
        (raw(event(amount="12.3.4")), "invalid_field"),
        (raw(event(amount="1.00001")), "invalid_field"),
        (raw(event(amount="NaN")), "invalid_field"),
        (raw(event(amount="0")), "non_positive_amount"),
        (raw(event(amount="-5")), "non_positive_amount"),
        (raw(event(fee="-1")), "invalid_field"),
        (raw(event(currency="XYZ")), "unknown_currency"),
        (raw(event(country="SEN")), "invalid_field"),
        (raw(event(type="chargeback")), "invalid_field"),
        (raw(event(status="done")), "invalid_field"),
        (raw(event(occurred_at="2025-07-01T10:15:00")), "invalid_field"),
        (raw(event(occurred_at="2025-07-09T10:15:00Z")), "invalid_field"),
        (raw(event(occurred_at="1999-12-31T10:15:00Z")), "invalid_field"),
        (raw(event(event_id="")), "invalid_field"),
    ],
)
def test_malformed_events_are_rejected_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_event(value, now=NOW)
    assert exc.value.reason == reason
    assert exc.value.detail


# The hand-written fast path must decide exactly as the pydantic model does: same values (and
# Decimal spellings, time zone, fields set), same rejection reason and detail. The reference
# below is decode_event as it was before the fast path existed.
def reference(value: bytes, now: datetime) -> TransactionEvent:
    try:
        obj = json.loads(value, parse_float=Decimal)
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
    if ev.occurred_at > now + MAX_CLOCK_SKEW:
        raise InvalidEvent("invalid_field", "occurred_at is more than a day in the future")
    if ev.occurred_at < EARLIEST_EVENT:
        raise InvalidEvent("invalid_field", "occurred_at is before 2000-01-01")
    return ev


def outcome(decode: Any, value: bytes) -> Any:
    try:
        ev = decode(value, NOW)
    except InvalidEvent as exc:
        return ("rejected", exc.reason, exc.detail)
    dump = ev.model_dump()
    return (
        "accepted",
        {k: (type(v), str(v)) for k, v in dump.items()},
        sorted(ev.model_fields_set),
        ev.occurred_at.tzinfo is UTC,
        type(ev) is TransactionEvent,
    )


_ABSENT = object()
VARIANTS: dict[str, list[Any]] = {
    "event_id": ["e", " e", "e ", "\x1ce", "e\x1f", "\u3000e", "", " ", "x" * 128, "x" * 129,
                 5, None, _ABSENT, ["e"], "é-1", "e\n", "e\x00", "\x00"],
    "txn_id": ["T", " T ", "\x85T", "T\u00a0", "y" * 128, "y" * 129, 7, True, _ABSENT, "T\x00"],
    "merchant_id": ["M-1", None, _ABSENT, "", " M ", "\x1dM", 12, "m" * 129, "M\x00-1"],
    "occurred_at": [
        "2025-07-01T10:15:00Z", "2025-07-01T10:15:00.1Z", "2025-07-01T10:15:00.123456Z",
        "2025-07-01T10:15:00.1234567Z", "2025-07-01T12:15:00+02:00", "2025-07-01T10:15:00-00:00",
        "2025-07-01T10:15:00+14:00", "2025-07-01T10:15:00+23:59", "2025-07-01T10:15:00-23:59",
        "2025-07-01t10:15:00z", "2025-07-01 10:15:00Z", "2025-07-01T10:15:00", "2025-07-01",
        "2025-07-01T24:00:00Z", "2025-02-30T10:15:00Z", "2025-07-01T10:15:60Z",
        "2025-07-01T10:15Z", "2025-07-01T10:15:00+0200", "2025-07-01T10:15:00,5Z",
        "20250701T101500Z", "2025-07-01T10:15:00.Z", "2025-07-03T10:15:00Z",
        "1999-12-31T23:59:59Z", "2000-01-01T00:00:00Z", "2025-07-01T10:15:00+02:30",
        1751364900, Decimal("1751364900.5"), None, _ABSENT, "\u0662025-07-01T10:15:00Z",
    ],
    "amount": ["125.50", "0125.5", "1e3", "1E+2", "125.5000", "125.50000", "0.0001",
               "0.00001", "999999999999999", "999999999999999.9999", "1000000000000000",
               "-0", "0.0000", "0", "+5", "-5", " 12.5 ", "\u0663", "12.3.4", "NaN", "Infinity",
               "", 5, 0, -3, 10**16, Decimal("12345678901234.5678"), Decimal("1E+2"),
               Decimal("1.23456"), True, None, [1], _ABSENT],
    "currency": ["XOF", "xof", "usd", "XYZ", "XO", "XOFF", " XOF", "ß12", "x\u0307of", 5,
                 None, _ABSENT],
    "country": ["SN", "sn", "S1", "SEN", "S", "éé", "SN\n", "\u212aK", 5, None, _ABSENT],
    "channel": ["card", " card ", "\x1ecard", "", "c" * 64, "c" * 65, 3, None, _ABSENT, "ca\x00rd"],
    "type": ["payment", "refund", "payout", "transfer", "Payment", " payment", "chargeback", 1,
             None, _ABSENT],
    "status": ["succeeded", "failed", "pending", "FAILED", "done", 0, None, _ABSENT],
    "fee": ["1.25", "0", "-1", "1.00001", "0.0000", 2, Decimal("0.5"), None, _ABSENT, "x"],
}  # fmt: skip


def mutated(over: dict[str, Any]) -> bytes:
    doc = event()
    for key, value in over.items():
        if value is _ABSENT:
            doc.pop(key, None)
        else:
            doc[key] = value
    doc["extra_field"] = {"ignored": [1, 2.5]}

    text = json.dumps(doc, default=lambda o: f"@@{o}@@")
    # Decimals travel as JSON numbers written exactly (never through a float).
    return text.replace('"@@', "").replace('@@"', "").encode()


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, vs in VARIANTS.items() for v in vs]
)  # fmt: skip
def test_fast_path_decides_as_the_model_on_each_field(field: str, value: Any) -> None:
    raw_value = mutated({field: value})
    assert outcome(decode_event, raw_value) == outcome(reference, raw_value)


def test_fast_path_decides_as_the_model_on_random_combinations() -> None:
    rnd = random.Random(11)
    for _ in range(3000):
        over = {f: rnd.choice(vs) for f, vs in VARIANTS.items() if rnd.random() < 0.2}
        raw_value = mutated(over)
        assert outcome(decode_event, raw_value) == outcome(reference, raw_value), over


@pytest.mark.parametrize(
    "value",
    [b'\xef\xbb\xbf{"a": 1}', '{"a": 1}'.encode("utf-16"), b"{}", b"{", b"[]", b"null", b"1.5",
     b'{"amount": 1e400}', b"\xff", raw(event()).replace(b'"125.50"', b"1.5e2"),
     # Repeats of a name outside the event's fields; lone surrogates, escapes, whitespace.
     raw(event() | {"x": {"a": 1}}).replace(b'"a"', b'"a": 2, "a"'),
     raw(event()).replace(b'"txn_id": "', b'"txn_id": "\\ud800'),
     raw(event()).replace(b'"txn_id": "', b'"txn_id": "\\u0041'),
     raw(event()).replace(b'"status": "succeeded"', b'"status": "succ\\u0065eded"'),
     b" \n" + raw(event()) + b"\n ", raw(event()) + b"x", raw(event()) + b"{}"],
)  # fmt: skip
def test_json_parsing_is_unchanged(value: bytes) -> None:
    assert outcome(decode_event, value) == outcome(reference, value)


DEEP = b"[" * 6000


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (DEEP, "too_deep"),
        (b'{"x": ' * 3000, "too_deep"),  # msgspec's limit (the fast path) as well as json's
        (raw(event()).replace(b'"125.50"', b"[" * 5000 + b"]" * 5000), "too_deep"),
        (raw(event()).replace(b'"125.50"', b"1e99999999999999999999"), "bad_number"),
        (raw(event()).replace(b'"1.25"', b"1e-99999999999999999999"), "bad_number"),
        (raw(event()).replace(b'"125.50"', b"9" * 5000), "invalid_field"),
        (raw(event()).replace(b'"125.50"', b"NaN"), "bad_number"),
        (raw(event()).replace(b'"1.25"', b"-Infinity"), "bad_number"),
        (b'{"x": NaN}', "bad_number"),
        (raw(event()).replace(b'"amount"', b'"amount": "7", "amount"'), "duplicate_field"),
        (raw(event()).replace(b'"amount"', b'"amount": "-7", "amount"'), "duplicate_field"),
        (raw(event()).replace(b'"txn_id"', b'"txn_id": "T-1", "txn_\\u0069d"'), "duplicate_field"),
        (raw(event()).replace(b'"fee"', b'"fee": "1", "fee"'), "duplicate_field"),
        (raw(event(merchant_id="M-1\x00")), "invalid_field"),
        (b"\x00" * 100, "not_json"),
    ],
)
def test_hostile_values_are_rejected_with_a_reason_and_nothing_else(
    value: bytes, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_event(value, now=NOW)
    assert (exc.value.reason, type(exc.value)) == (reason, InvalidEvent)
    assert exc.value.detail


def test_a_long_integer_in_an_ignored_field_is_accepted_as_by_the_fast_readers() -> None:
    value = raw(event() | {"x": 1}).replace(b'"x": 1', b'"x": ' + b"9" * 5000)
    assert decode_event(value, now=NOW).amount == Decimal("125.50")
    assert compiled_reading(value) is not None


def test_a_repeated_field_is_refused_by_the_fast_path_too() -> None:
    # _fast alone (msgspec keeps the last copy): it must leave the value to the model.
    value = raw(event()).replace(b'"amount"', b'"amount": "7", "amount"')
    assert _fast(value) is None
    assert _fast(raw(event())) is not None


def test_copies_of_a_decoded_event_can_be_updated() -> None:
    ev = decode_event(raw(event()), now=NOW)
    changed = ev.model_copy(update={"fee": Decimal("2")})
    deep = ev.model_copy(update={"channel": "card"}, deep=True)
    assert (changed.fee, deep.channel) == (Decimal("2"), "card")
    assert ev.fee == Decimal("1.25") and ev.model_fields_set == set(TransactionEvent.model_fields)


# The consumer's compiled reader (ingest/_summary.c) reads raw values itself: it must take only
# what decode_event accepts, with the same values, and leave everything else to decode_event.
_LO, _HI = micros(EARLIEST_EVENT), micros(NOW + MAX_CLOCK_SKEW)
_SINCE = micros(NOW - timedelta(days=400))


def compiled_reading(value: bytes) -> tuple[str, str, str, str] | None:
    """The summary ``feed`` makes of ``value`` alone, or None when it leaves it to the model."""
    summary = Summary(_SINCE)
    stop, _ = summary.feed([value], 0, 1, _LO, _HI)
    if stop == 0:
        return None
    return (
        summary.ledger_json(),
        summary.hourly_json(),
        summary.minute_json(),
        _merchants(summary),
    )


def model_reading(value: bytes) -> tuple[str, str, str, str]:
    summary = Summary(_SINCE)
    add_event(summary, decode_event(value, NOW))
    return (
        summary.ledger_json(),
        summary.hourly_json(),
        summary.minute_json(),
        _merchants(summary),
    )


def _merchants(summary: Summary) -> str:
    return repr(summary.merchants())


def assert_read_as_the_model(value: bytes) -> bool:
    """True when the compiled reader took ``value`` (and then read it as the model does)."""
    got = compiled_reading(value)
    if got is not None:
        assert got == model_reading(value), value
    return got is not None


@pytest.mark.parametrize(
    ("field", "value"), [(f, v) for f, vs in VARIANTS.items() for v in vs]
)  # fmt: skip
def test_compiled_reader_takes_only_what_the_model_accepts_on_each_field(
    field: str, value: Any
) -> None:
    assert_read_as_the_model(mutated({field: value}))


def test_compiled_reader_takes_only_what_the_model_accepts_on_random_combinations() -> None:
    rnd = random.Random(12)
    taken = 0
    for _ in range(3000):
        over = {f: rnd.choice(vs) for f, vs in VARIANTS.items() if rnd.random() < 0.2}
        taken += assert_read_as_the_model(mutated(over))
    assert taken > 300  # it does read the usual events itself


def _with_first(field: str) -> bytes:
    """The usual event with ``field`` (raw JSON text) as its first member."""
    return raw(event()).replace(b"{", b"{" + field.encode() + b", ", 1)


NESTED_EXTRA = raw(event() | {"x": [1, {"a": [True, False, None, -0.5e-3, "s"]}, {}], "y": []})


@pytest.mark.parametrize(
    "value",
    [b'\xef\xbb\xbf{"a": 1}', b"{}", b"{", b"[]", b"null", b" ", b"",
     raw(event()).replace(b'"125.50"', b"NaN"), raw(event()).replace(b'"125.50"', b"1.5e2"),
     raw(event()).replace(b'"125.50"', b"0125.5"), raw(event()).replace(b'"125.50"', b"125.50"),
     raw(event()).replace(b'"125.50"', b"-1"), raw(event()).replace(b'"125.50"', b"1."),
     raw(event()).replace(b'"amount"', b'"amount": "7", "amount"'),
     raw(event()).replace(b'"txn_id": "', b'"txn_id": "\\u0041'),
     raw(event()).replace(b'"T-100"', '"T-\u00e9"'.encode()),
     raw(event()).replace(b'"T-100"', b'"T-\xff"'),
     raw(event()) + b"x", raw(event()) + b" \n", b" \t" + raw(event()), NESTED_EXTRA,
     _with_first('"x": [1, 2,]'), _with_first('"x": "\\u00e9"'), _with_first('"x": 01'),
     _with_first('"x": ' + "[" * 40 + "1" + "]" * 40), _with_first('"x": tru'),
     _with_first('"x": "a\tb"'), _with_first('"x": 1e5'), _with_first('"x": -'),
     raw(event() | {"merchant_id": None}), raw({k: v for k, v in event().items() if k != "fee"})],
)  # fmt: skip
def test_compiled_reader_on_json_edge_cases(value: bytes) -> None:
    assert_read_as_the_model(value)


def test_compiled_reader_skips_unknown_fields_and_whitespace() -> None:
    assert assert_read_as_the_model(NESTED_EXTRA)
    assert assert_read_as_the_model(b" \t" + raw(event()) + b" \n")
    assert assert_read_as_the_model(_with_first('"x": 1e5'))


def test_compiled_reader_reads_the_usual_event_and_its_plain_variants() -> None:
    for doc in (
        event(),
        event(merchant_id=None, fee="0"),
        {k: v for k, v in event().items() if k not in ("fee", "merchant_id")},
        event(occurred_at="2025-07-01T12:15:00.25+02:00", amount="0125.5000"),
    ):
        assert assert_read_as_the_model(raw(doc)), doc
        assert assert_read_as_the_model(json.dumps(doc, separators=(",", ":")).encode())


def test_compiled_reader_bounds_are_those_of_the_model() -> None:
    for at, taken in (
        (NOW + MAX_CLOCK_SKEW, True),
        (NOW + MAX_CLOCK_SKEW + timedelta(microseconds=1), False),
        (EARLIEST_EVENT, True),
        (EARLIEST_EVENT - timedelta(microseconds=1), False),
    ):
        value = raw(event(occurred_at=at.isoformat().replace("+00:00", "Z")))
        assert assert_read_as_the_model(value) is taken
        if not taken:
            with pytest.raises(InvalidEvent):
                decode_event(value, NOW)


def test_compiled_reader_leaves_non_bytes_and_oversized_values_to_the_model() -> None:
    summary = Summary()
    padded = raw(event() | {"pad": "x" * MAX_EVENT_BYTES})
    assert summary.feed([None, padded, bytearray(raw(event()))], 0, 3, _LO, _HI) == (0, None)  # type: ignore[list-item]
    assert summary.feed([padded], 0, 1, _LO, _HI) == (0, None)
