"""Drift: whether a live object still has everything its desired manifest sets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def drifted(desired: Any, actual: Any) -> bool:
    """True when ``actual`` lacks or differs in something ``desired`` sets.

    Fields the server adds (defaults, status) are ignored; lists of named items are matched by
    name, other lists by position and length.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return True
        return any(drifted(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return True
        if all(isinstance(d, Mapping) and "name" in d for d in desired):
            by_name = {a.get("name"): a for a in actual if isinstance(a, Mapping)}
            return any(drifted(d, by_name.get(d["name"])) for d in desired)
        return any(drifted(d, a) for d, a in zip(desired, actual, strict=True))
    if isinstance(desired, bool) or isinstance(actual, bool):
        return desired is not actual
    if isinstance(desired, int | float) and isinstance(actual, int | float):
        return float(desired) != float(actual)
    return bool(desired != actual)
