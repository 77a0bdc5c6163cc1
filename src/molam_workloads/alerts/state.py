"""The per-rule state machine, as a pure function (no I/O, unit-tested on its own).

::

    inactive --cond--> pending --cond for `for`--> firing --not cond--> (resolved) inactive
        ^                 |                                                  |
        +---- not cond ---+--------------------------------------------------+

``cond`` is the rule's comparison applied to the metric value of this cycle. It has three
values: ``True``, ``False`` and ``None`` for *no data* — a rate whose denominator is zero
(success/failure rate with no settled transaction, refund rate or average ticket with no
succeeded payment) or a volume with no FX rate. No data is treated like a false condition, as
Prometheus treats an empty result: it never fires, it resets a pending rule, and it resolves a
firing alert (there is nothing left to alert on). Counts and volumes over an empty window are
0, not no data, so ``tx_count lt 1`` fires when traffic stops.

A rule with ``for_seconds == 0`` fires on the first cycle its condition holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum


class State(StrEnum):
    inactive = "inactive"
    pending = "pending"
    firing = "firing"


class Action(StrEnum):
    none = "none"
    fire = "fire"  # open an alert and notify
    resolve = "resolve"  # close the open alert and notify


@dataclass(frozen=True)
class Step:
    state: State
    pending_since: datetime | None
    action: Action


def step(
    state: State,
    pending_since: datetime | None,
    cond: bool | None,
    now: datetime,
    for_seconds: int,
) -> Step:
    """Next state of one rule given this cycle's condition."""
    if not cond:  # False or no data
        if state is State.firing:
            return Step(State.inactive, None, Action.resolve)
        return Step(State.inactive, None, Action.none)
    if state is State.firing:
        return Step(State.firing, None, Action.none)
    since = pending_since if state is State.pending and pending_since is not None else now
    if now - since >= timedelta(seconds=for_seconds):
        return Step(State.firing, None, Action.fire)
    return Step(State.pending, since, Action.none)


def compare(value: Decimal | None, comparison: str, threshold: Decimal) -> bool | None:
    """The rule's comparison; ``None`` when the value is ``None`` (no data)."""
    if value is None:
        return None
    if comparison == "gt":
        return value > threshold
    if comparison == "gte":
        return value >= threshold
    if comparison == "lt":
        return value < threshold
    if comparison == "lte":
        return value <= threshold
    raise ValueError(f"unknown comparison {comparison!r}")
