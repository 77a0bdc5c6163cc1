"""Schemathesis hooks of test_openapi_contract (loaded with SCHEMATHESIS_HOOKS).

``positive_data_acceptance_documented`` is schemathesis's ``positive_data_acceptance`` with one
exception that the API documents and no JSON Schema can state: a 422 with
``details.rule = "range"`` is accepted only when the request's ``from``/``to``/``tz`` do break
the range rule that the parameters' descriptions state, as computed here on its own.
"""

from __future__ import annotations

import ast
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

# CPython 3.11.7 (this virtualenv's) keeps the AST converter's recursion depth in shared state:
# two threads parsing at once can fail with "AST constructor recursion depth mismatch", and
# hypothesis parses lambdas in both schemathesis workers (seen in runs here). One at a time.
_AST_LOCK = threading.Lock()
_ast_parse = ast.parse


def _parse_one_at_a_time(*args: Any, **kwargs: Any) -> Any:
    with _AST_LOCK:
        return _ast_parse(*args, **kwargs)


ast.parse = _parse_one_at_a_time

MAX_RANGE = timedelta(days=400)  # ApiSettings.api_max_range_days, its default
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _instant(text: str, zone: ZoneInfo) -> datetime:
    value = datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(UTC)


def breaks_range_rule(query: dict[str, Any]) -> bool:
    """Whether ``from``/``to`` break the documented rule: ``from`` before ``to``, both within
    1970-2200 and at most 400 days apart (``to`` defaults to the next hour, ``from`` to ``to``
    minus 7 days)."""
    zone = ZoneInfo(str(query.get("tz", "UTC")))
    try:
        if query.get("to") is not None:
            end = _instant(str(query["to"]), zone)
        else:
            now = datetime.now(UTC)
            end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        if query.get("from") is not None:
            start = _instant(str(query["from"]), zone)
        else:
            start = end - timedelta(days=7)
    except OverflowError:
        return True  # beyond what a date-time can hold: outside 1970-2200
    inside = EARLIEST <= start <= LATEST and EARLIEST <= end <= LATEST
    return not inside or start >= end or end - start > MAX_RANGE


def _range_refusal(response: Any) -> bool:
    if response.status_code != 422:
        return False
    try:
        details = json.loads(response.content)["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(details, dict) and details.get("rule") == "range"


def _note(verdict: str) -> None:
    """One line per response checked, in the file the test names (it counts them)."""
    path = os.environ.get("MOLAM_CHECK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(verdict + "\n")


@schemathesis.check
def positive_data_acceptance_documented(ctx: Any, response: Any, case: Any) -> bool | None:
    try:
        result = positive_data_acceptance(ctx, response, case)
    except AssertionError:
        if _range_refusal(response) and breaks_range_rule(dict(case.query or {})):
            _note("range-rule")
            return None
        _note("failed")
        raise
    _note("checked")
    return result
