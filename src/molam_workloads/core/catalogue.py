"""The metric catalogue: every KPI of the API and every alert-rule metric, declared once with
its sums, its formula and its unit.

A sum (``SUMS``) totals one measure of the aggregate tables (``core.measures``) over a range
and a scope; a money sum is converted to the reporting currency. A metric (``METRICS``) is a
formula over sums (``Ref``, ``+``, ``-``, ``/``), with a unit. The rest derives from them:

- the API's KPIs (``api.queries.aggregates.kpis_of``: ``MetricDef.shown``) and their model;
- the alert evaluator's and the backtest's SQL (``core.rules``: ``RULE_SUMS_SQL`` and
  ``metric_value_sql``, from ``MetricDef.rule_sql``);
- ``core.rules.Metric``, the names of ``alert_metrics()``.

The API's response model, the AlertRule CRD's ``metric`` enum and the dashboard's KPI tiles are
compared with this catalogue by tests (``tests/workloads/core/test_catalogue.py``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from functools import cached_property
from typing import Any


class Unit(StrEnum):
    COUNT = "count"  # a whole number
    MONEY = "money"  # reporting currency, rounded to its minor unit
    RATIO = "ratio"  # a fraction (0.2 = 20%), 6 decimals


# Ratios are exact quotients rounded here, half to even as Python's round() of the float was.
RATIO_EXP = Decimal("0.000001")
RATIO_DIGITS = -int(RATIO_EXP.as_tuple().exponent)


@dataclass(frozen=True)
class Sum:
    """The total of aggregate rows' ``measure`` (None: counted from ``analytics_anomalies``)."""

    name: str
    measure: str | None
    unit: Unit


SUMS: tuple[Sum, ...] = (
    Sum("tx_count", "tx_count", Unit.COUNT),
    Sum("succeeded_count", "succeeded_count", Unit.COUNT),
    Sum("failed_count", "failed_count", Unit.COUNT),
    Sum("pending_count", "pending_count", Unit.COUNT),
    Sum("payment_count", "payment_count", Unit.COUNT),
    Sum("gross_volume", "payment_volume_local", Unit.MONEY),
    Sum("refund_count", "refund_count", Unit.COUNT),
    Sum("refund_volume", "refund_volume_local", Unit.MONEY),
    Sum("fees", "fee_local", Unit.MONEY),
    Sum("anomaly_count", None, Unit.COUNT),
)
SUM_BY_NAME: dict[str, Sum] = {s.name: s for s in SUMS}

_PRECEDENCE = {"+": 1, "-": 1, "/": 2}
# Sums by name: counts as int or Decimal, money as Decimal (a dict, or a database row).
Sums = Any
Evaluate = Callable[[Sums], Decimal | None]
Show = Callable[[Sums, Decimal], Any]
_APPLY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    # exact: a Decimal quotient (28 digits), never int / int's float; no denominator: no value
    "/": lambda a, b: Decimal(a) / b if b else None,
}


class Formula:
    """An expression over sums; ``a / b`` is None (SQL NULL) when ``b`` is zero."""

    def __add__(self, other: Formula) -> Formula:
        return Op("+", self, other)

    def __sub__(self, other: Formula) -> Formula:
        return Op("-", self, other)

    def __truediv__(self, other: Formula) -> Formula:
        return Op("/", self, other)

    def sums(self) -> tuple[str, ...]:
        raise NotImplementedError

    def value(self, sums: Sums) -> Decimal | None:
        return self.compiled()(sums)

    def compiled(self) -> Evaluate:
        """``value`` as one closure: the API computes every KPI of every row with it."""
        raise NotImplementedError

    def sql(self, refs: Mapping[str, str]) -> str:
        """The SQL expression, each sum replaced by ``refs[name]``."""
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def divides(self) -> bool:
        """Whether a quotient is part of it (its value can then be None)."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Ref(Formula):
    name: str

    def __post_init__(self) -> None:
        if self.name not in SUM_BY_NAME:
            raise ValueError(f"{self.name!r} is not a sum of the catalogue")

    def sums(self) -> tuple[str, ...]:
        return (self.name,)

    def compiled(self) -> Evaluate:
        return operator.itemgetter(self.name)

    def sql(self, refs: Mapping[str, str]) -> str:
        return refs[self.name]

    def text(self) -> str:
        return self.name

    def divides(self) -> bool:
        return False


@dataclass(frozen=True, eq=False)
class Op(Formula):
    op: str
    left: Formula
    right: Formula

    def sums(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.left.sums(), *self.right.sums())))

    def compiled(self) -> Evaluate:
        left, right, apply = self.left.compiled(), self.right.compiled(), _APPLY[self.op]

        def evaluate(sums: Sums) -> Decimal | None:
            a, b = left(sums), right(sums)
            return None if a is None or b is None else apply(a, b)

        return evaluate

    def sql(self, refs: Mapping[str, str]) -> str:
        a, b = self.left.sql(refs), self.right.sql(refs)
        if self.op == "/":  # numeric: sums of integer columns would divide as integers
            return f"({a})::numeric / nullif({b}, 0)"
        return f"({a} {self.op} {b})"

    def text(self) -> str:
        def side(f: Formula, right: bool) -> str:
            inner = _PRECEDENCE.get(f.op, 3) if isinstance(f, Op) else 3
            mine = _PRECEDENCE[self.op]
            tight = inner < mine or (right and inner == mine)
            return f"({f.text()})" if tight else f.text()

        return f"{side(self.left, False)} {self.op} {side(self.right, True)}"

    def divides(self) -> bool:
        return self.op == "/" or self.left.divides() or self.right.divides()


@dataclass(frozen=True)
class MetricDef:
    name: str
    formula: Formula
    unit: Unit
    description: str
    kpi: bool = True  # a KPI of the API (/v1/kpis and every row of the other summaries)
    alert: bool = True  # a metric alert rules may watch

    @property
    def sums(self) -> tuple[Sum, ...]:
        return tuple(SUM_BY_NAME[s] for s in self.formula.sums())

    @property
    def nullable(self) -> bool:
        """Whether the value can be missing: a quotient without denominator."""
        return self.formula.divides()

    @property
    def doc(self) -> str:
        """The description, with the formula when it is more than one sum."""
        if isinstance(self.formula, Ref):
            return self.description
        return f"{self.description} {self.formula.text()}."

    @cached_property
    def value(self) -> Evaluate:
        """The exact value from the sums (Decimal arithmetic, no rounding): ``m.value(sums)``."""
        return self.formula.compiled()

    @cached_property
    def shown(self) -> Show:
        """The value as the API shows it, from the sums and the reporting currency's minor
        unit (``exp``): counts as int, money rounded half up to ``exp``, ratios rounded to
        ``RATIO_EXP`` as a float (a JSON number, as success_rate always was; not money).
        None: no denominator. One closure per metric, a single sum read directly: the API
        runs them for every row of a series."""
        if isinstance(self.formula, Ref):
            name = self.formula.name
            if self.unit is Unit.COUNT:
                return lambda sums, exp: int(sums[name])
            if self.unit is Unit.MONEY:
                return lambda sums, exp: Decimal(sums[name]).quantize(exp, rounding=ROUND_HALF_UP)
        value = self.formula.compiled()
        if self.unit is Unit.COUNT:

            def show(sums: Sums, exp: Decimal) -> Any:
                v = value(sums)
                return None if v is None else int(v)

        elif self.unit is Unit.MONEY:

            def show(sums: Sums, exp: Decimal) -> Any:
                v = value(sums)
                return None if v is None else Decimal(v).quantize(exp, rounding=ROUND_HALF_UP)

        elif self._counts_quotient():
            assert isinstance(self.formula, Op)
            return _counts_ratio(self.formula.left.compiled(), self.formula.right.compiled())
        else:

            def show(sums: Sums, exp: Decimal) -> Any:
                v = value(sums)
                return None if v is None else _ratio(Decimal(v))

        return show

    def _counts_quotient(self) -> bool:
        """A quotient of counts (every rate of the KPIs): ``shown`` rounds it in integers."""
        return (
            isinstance(self.formula, Op)
            and self.formula.op == "/"
            and all(s.unit is Unit.COUNT for s in self.sums)
        )

    def rule_sql(self, refs: Mapping[str, str], unconverted: str) -> str:
        """The alert value: a single sum counts nothing as 0; a value that needs money is NULL
        (no data) when ``unconverted`` (the groups without an FX rate) is positive."""
        expr = self.formula.sql(refs)
        if isinstance(self.formula, Ref):
            expr = f"coalesce({expr}, 0)"
        if any(s.unit is Unit.MONEY for s in self.sums):
            expr = f"CASE WHEN {unconverted} > 0 THEN NULL ELSE {expr} END"
        return expr


def _ratio(v: Decimal) -> float:
    return float(v.quantize(RATIO_EXP, rounding=ROUND_HALF_EVEN))


_RATIO_SCALE = 10**RATIO_DIGITS


def _counts_ratio(num: Evaluate, den: Evaluate) -> Show:
    """``a / b`` of counts rounded half to even to ``RATIO_EXP``, in integers: the same float
    as rounding the Decimal quotient (whose 28 digits cannot reach a tie that the exact
    quotient does not have, for counts below 10**20). The three rates were the dearest part
    of a KPI document; this took it from 6.2 to 4.4 us (docs/decisions/029-kpi-rows.md)."""

    def show(sums: Sums, exp: Decimal) -> Any:
        x, y = num(sums), den(sums)
        if x is None or not y:
            return None
        a, b = int(x), int(y)
        if a < 0 or b < 0:  # not a count: the general path
            return _ratio(Decimal(a) / b)
        q, r = divmod(a * _RATIO_SCALE, b)
        if 2 * r > b or (2 * r == b and q % 2):
            q += 1
        return q / _RATIO_SCALE  # int / int: the correctly rounded float of the decimal

    return show


_ok, _ko = Ref("succeeded_count"), Ref("failed_count")

METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef(
            "tx_count", Ref("tx_count"), Unit.COUNT, "All transactions, every type and status."
        ),
        MetricDef(
            "succeeded_count",
            _ok,
            Unit.COUNT,
            "Succeeded transactions, every type.",
            alert=False,
        ),
        MetricDef("failed_count", _ko, Unit.COUNT, "Failed transactions, every type.", alert=False),
        MetricDef(
            "pending_count",
            Ref("pending_count"),
            Unit.COUNT,
            "Pending transactions, every type.",
            alert=False,
        ),
        MetricDef(
            "payment_count",
            Ref("payment_count"),
            Unit.COUNT,
            "Succeeded payments (converted currencies only).",
            alert=False,
        ),
        MetricDef(
            "gross_volume",
            Ref("gross_volume"),
            Unit.MONEY,
            "Succeeded payments' volume, reporting currency.",
        ),
        MetricDef(
            "refund_count",
            Ref("refund_count"),
            Unit.COUNT,
            "Succeeded refunds (converted currencies only).",
            alert=False,
        ),
        MetricDef(
            "refund_volume",
            Ref("refund_volume"),
            Unit.MONEY,
            "Succeeded refunds' volume, reporting currency.",
            alert=False,
        ),
        MetricDef("fees", Ref("fees"), Unit.MONEY, "Fees of succeeded transactions.", alert=False),
        MetricDef(
            "net_volume",
            Ref("gross_volume") - Ref("refund_volume") - Ref("fees"),
            Unit.MONEY,
            "Net volume:",
            alert=False,
        ),
        MetricDef("success_rate", _ok / (_ok + _ko), Unit.RATIO, "Success rate:"),
        MetricDef("failure_rate", _ko / (_ok + _ko), Unit.RATIO, "Failure rate:"),
        MetricDef(
            "refund_rate",
            Ref("refund_count") / Ref("payment_count"),
            Unit.RATIO,
            "Refunds per succeeded payment:",
        ),
        MetricDef(
            "avg_ticket",
            Ref("gross_volume") / Ref("payment_count"),
            Unit.MONEY,
            "Average ticket:",
        ),
        MetricDef(
            "anomaly_count",
            Ref("anomaly_count"),
            Unit.COUNT,
            "Anomalies SIRA detected (scoped by merchant only).",
            kpi=False,
        ),
    )
}


def kpis() -> tuple[MetricDef, ...]:
    """The API's KPIs, in the order its documents list them."""
    return tuple(m for m in METRICS.values() if m.kpi)


def alert_metrics() -> tuple[MetricDef, ...]:
    """The metrics of alert rules, in the order the CRD's enum lists them."""
    return tuple(m for m in METRICS.values() if m.alert)
