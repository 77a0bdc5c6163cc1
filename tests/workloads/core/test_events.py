"""decode_event: what a valid event is, and the reason given for each kind of malformed one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from molam_workloads.core.events import MAX_EVENT_BYTES, InvalidEvent, decode_event

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
