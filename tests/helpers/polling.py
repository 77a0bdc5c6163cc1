"""Waiting for the system under test from synchronous tests (the end-to-end ones)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def eventually(check: Callable[[], Any], timeout: float = 60, every: float = 1.0) -> Any:
    """Call ``check`` every ``every`` seconds until it returns something truthy, which is
    returned; a failed assertion or request in the meantime counts as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"not true within {timeout}s (last error: {last!r})")
