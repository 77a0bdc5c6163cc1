"""Kubernetes-style status conditions (pure helpers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; lastTransitionTime moves only when the status does."""
    text = "Unknown" if status is None else "True" if status else "False"
    out: list[Condition] = []
    found = False
    for c in conditions:
        c = dict(c)
        if c.get("type") == type_:
            found = True
            if c.get("status") != text:
                c["lastTransitionTime"] = now or now_iso()
            c.update(status=text, reason=reason, message=message)
            if generation is not None:
                c["observedGeneration"] = generation
        out.append(c)
    if not found:
        new: Condition = {
            "type": type_,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now or now_iso(),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


def get_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
