"""core.decimals: the strings its schema allows are exactly the strings it accepts."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from molam_workloads.core.decimals import DECIMAL_TEXT, MAX_DECIMAL_TEXT, ExactDecimal

ADAPTER: TypeAdapter[Decimal] = TypeAdapter(ExactDecimal)


def test_schema_states_the_string_form() -> None:
    schema = ADAPTER.json_schema()
    assert schema["anyOf"][0] == {"type": "number"}
    assert schema["anyOf"][1] == {
        "type": "string",
        "pattern": DECIMAL_TEXT,
        "maxLength": MAX_DECIMAL_TEXT,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.8", "0.8"), ("-12", "-12"), (".5", "0.5"), ("+3.", "3"), (0.2, "0.2"), (7, "7")],
)
def test_numbers_and_plain_decimal_strings(value: object, expected: str) -> None:
    assert ADAPTER.validate_python(value) == Decimal(expected)
    assert str(ADAPTER.validate_python(0.1)) == "0.1"  # exact, not 0.1000000000000000055…


@pytest.mark.parametrize(
    "value", ["", " 1", "1 ", "1e5", "NaN", "Infinity", "1_000", "0x10", "--1", ".", True, False]
)
def test_what_the_schema_forbids_is_refused(value: object) -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(value)


def test_too_long_is_refused() -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python("1" * (MAX_DECIMAL_TEXT + 1))
    assert ADAPTER.validate_python("1" * MAX_DECIMAL_TEXT) == Decimal("1" * MAX_DECIMAL_TEXT)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(DECIMAL_TEXT, fullmatch=True).filter(lambda s: len(s) <= MAX_DECIMAL_TEXT))
def test_every_string_the_pattern_allows_is_accepted(text: str) -> None:
    assert re.match(DECIMAL_TEXT, text)
    assert ADAPTER.validate_python(text) == Decimal(text)
