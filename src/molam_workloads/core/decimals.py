"""A decimal given as a JSON number or as a plain decimal string, read exactly.

``helm --set`` and YAML pass decimals as strings, and JSON clients send numbers, so a document's
decimal fields accept both. The OpenAPI schema says which strings: a plain decimal (``"0.8"``,
``"-12"``, ``".5"``), never an exponent, NaN, an empty string or padding, so that no request the
schema allows is refused and none it forbids is taken.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

DECIMAL_TEXT = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$"
MAX_DECIMAL_TEXT = 64
_DECIMAL_TEXT = re.compile(DECIMAL_TEXT)


def exact_decimal(value: Any) -> Any:
    """A float through ``repr`` (0.2 stays 0.2, not 0.2000…01); a string only if it is a plain
    decimal, as the schema says; a boolean never (JSON ``true`` is not 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str) and (len(value) > MAX_DECIMAL_TEXT or not _DECIMAL_TEXT.match(value)):
        raise ValueError('must be a number or a decimal string such as "0.8" or "-12"')
    return value


ExactDecimal = Annotated[
    Decimal,
    BeforeValidator(exact_decimal),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "pattern": DECIMAL_TEXT, "maxLength": MAX_DECIMAL_TEXT},
            ]
        }
    ),
]
