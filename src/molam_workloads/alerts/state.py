"""The per-rule state machine, as a pure function (no I/O, unit-tested on its own).

::

    inactive --cond--> pending --cond for `for`--> firing --not cond--> (resolved) inactive
        ^                 |                                                  |
        +---- not cond ---+--------------------------------------------------+
    any state --no data, noDataState nodata--> nodata (a firing alert is resolved)

``cond`` is the rule's comparison applied to the metric value of this cycle. It has three
values: ``True``, ``False`` and ``None`` for *no data* — a rate whose denominator is zero
(success/failure rate with no settled transaction, refund rate or average ticket with no
succeeded payment), a volume with no FX rate, or any value while the ingestion is stale (the
evaluator's call). What no data means is the rule's ``noDataState``, as in Grafana:

- ``nodata`` (the default): the state ``nodata``. It never fires, it resets a pending rule and
  it resolves a firing alert, as Prometheus treats an empty result, and it shows as NoData;
- ``ok``: a false condition (``inactive``);
- ``alerting``: a true condition: pending, then firing after ``for``.

Counts and volumes over an empty window are 0, not no data, so ``tx_count lt 1`` fires when
traffic stops (unless the ingestion is stale: then nothing is known).

A rule with ``for_seconds == 0`` fires on the first cycle its condition holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from molam_workloads.core.rules import NoDataState


class State(StrEnum):
    inactive = "inactive"
    pending = "pending"
    firing = "firing"
    nodata = "nodata"


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
    no_data_state: str = NoDataState.nodata,
) -> Step:
    """Next state of one rule given this cycle's condition (``None``: no data, read as the
    rule's ``no_data_state`` says)."""
    if cond is None:
        if no_data_state == NoDataState.alerting:
            cond = True
        elif no_data_state == NoDataState.nodata:
            action = Action.resolve if state is State.firing else Action.none
            return Step(State.nodata, None, action)
    if not cond:  # False, or no data read as ok
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
