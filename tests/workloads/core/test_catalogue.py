"""The metric catalogue: each metric's value from known sums, its SQL twin on PostgreSQL, and
every list that must name the catalogue's metrics (the API's model, ``Metric``, the AlertRule
CRD's enum, the dashboard's tiles, the docs).

Adding a metric: declare it in ``core/catalogue.py`` and give it its expected value in
``EXPECTED`` below.
"""

from __future__ import annotations

import re
import types
import typing
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from molam_workloads.api.schemas.analytics import Kpis
from molam_workloads.core import catalogue
from molam_workloads.core.catalogue import METRICS, RATIO_EXP, Ref, Unit
from molam_workloads.core.rules import RULE_SUMS, Metric, metric_value_sql

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "src" / "molam_workloads" / "api" / "static"

# The sums of one group: 17 transactions (12 succeeded, 4 failed, 1 pending), 9 payments for
# 70.4045 (reporting currency), 1 refund of 1.65, 1.415 of fees, 3 anomalies.
SUMS = {
    "tx_count": Decimal(17),
    "succeeded_count": Decimal(12),
    "failed_count": Decimal(4),
    "pending_count": Decimal(1),
    "payment_count": Decimal(9),
    "gross_volume": Decimal("70.4045"),
    "refund_count": Decimal(1),
    "refund_volume": Decimal("1.65"),
    "fees": Decimal("1.415"),
    "anomaly_count": Decimal(3),
}
# Each metric's exact value from SUMS, worked out by hand.
EXPECTED: dict[str, Decimal] = {
    "tx_count": Decimal(17),
    "succeeded_count": Decimal(12),
    "failed_count": Decimal(4),
    "pending_count": Decimal(1),
    "payment_count": Decimal(9),
    "gross_volume": Decimal("70.4045"),
    "refund_count": Decimal(1),
    "refund_volume": Decimal("1.65"),
    "fees": Decimal("1.415"),
    "net_volume": Decimal("67.3395"),  # 70.4045 - 1.65 - 1.415
    "success_rate": Decimal("0.75"),  # 12 / 16
    "failure_rate": Decimal("0.25"),  # 4 / 16
    "refund_rate": Decimal(1) / Decimal(9),
    "avg_ticket": Decimal("70.4045") / Decimal(9),
    "anomaly_count": Decimal(3),
}
ZERO = dict.fromkeys(SUMS, Decimal(0))


def test_every_metric_has_its_expected_value() -> None:
    assert list(EXPECTED) == list(METRICS), "declare the metric and its EXPECTED value together"
    for name, metric in METRICS.items():
        assert metric.value(SUMS) == EXPECTED[name], name


def test_a_quotient_without_denominator_is_none_and_only_then() -> None:
    for metric in METRICS.values():
        value = metric.value(ZERO)
        assert (value is None) == metric.nullable, metric.name
        if value is not None:
            assert value == 0, metric.name


def test_formulas_read_as_written() -> None:
    assert METRICS["success_rate"].formula.text() == (
        "succeeded_count / (succeeded_count + failed_count)"
    )
    assert METRICS["net_volume"].formula.text() == "gross_volume - refund_volume - fees"
    a, b, c = Ref("tx_count"), Ref("fees"), Ref("gross_volume")
    assert (a - (b - c)).text() == "tx_count - (fees - gross_volume)"
    assert (a / (b / c)).text() == "tx_count / (fees / gross_volume)"
    assert ((a / b) + c).text() == "tx_count / fees + gross_volume"
    with pytest.raises(ValueError, match="not a sum"):
        Ref("payout_count")


def test_shown_rounds_for_the_unit() -> None:
    cents = Decimal("0.01")
    shown = {name: m.shown(SUMS, cents) for name, m in METRICS.items()}
    assert shown["tx_count"] == 17 and isinstance(shown["tx_count"], int)
    assert shown["gross_volume"] == Decimal("70.40")  # 70.4045
    assert shown["fees"] == Decimal("1.42")  # 1.415, half up
    assert METRICS["fees"].shown(SUMS, Decimal(1)) == Decimal(1)  # XOF: no minor unit
    assert shown["avg_ticket"] == Decimal("7.82")  # 7.8227…
    assert shown["refund_rate"] == 0.111111 and isinstance(shown["refund_rate"], float)
    rate = METRICS["success_rate"].shown
    # the exact quotient rounded half to even: 1/128 = 0.0078125, 399/640 = 0.6234375
    assert rate({"succeeded_count": 1, "failed_count": 127}, cents) == 0.007812
    assert rate({"succeeded_count": 399, "failed_count": 241}, cents) == 0.623438
    assert rate({"succeeded_count": 0, "failed_count": 0}, cents) is None


@settings(max_examples=400, deadline=None)
@given(
    a=st.integers(min_value=0, max_value=10**15),
    b=st.integers(min_value=0, max_value=10**15),
    tie=st.booleans(),
)
def test_rates_of_counts_round_as_the_decimal_quotient(a: int, b: int, tie: bool) -> None:
    """The rates round their counts' quotient in integers: the same float as rounding the
    Decimal quotient half to even, ties (b dividing 2 a 10**6) included."""
    if tie:  # a quotient with a 5 in the 7th decimal and nothing after it
        b = 2 ** (b % 8) * 5 ** (a % 8)
        a = a % (b * 3)
    sums = {"succeeded_count": a, "failed_count": b - a if b >= a else b}
    rate = METRICS["success_rate"]
    exact = rate.value(sums)
    want = None if exact is None else float(exact.quantize(RATIO_EXP, rounding=ROUND_HALF_EVEN))
    assert rate.shown(sums, Decimal("0.01")) == want


def test_sums_as_ints_give_the_same_figures() -> None:
    # a database row holds counts as int: their quotient is a Decimal, never a float
    value = METRICS["refund_rate"].value({"refund_count": 1, "payment_count": 9})
    assert isinstance(value, Decimal) and value == Decimal(1) / Decimal(9)
    # whole amounts may come as int too (net_volume of ints is an int): rounded the same
    whole = {name: int(v) for name, v in SUMS.items()}
    cents = Decimal("0.01")
    for m in METRICS.values():
        exact = m.shown({name: Decimal(v) for name, v in whole.items()}, cents)
        assert m.shown(whole, cents) == exact, m.name


# --- the SQL of alert rules against the same formulas ---------------------------------------


async def _rule_value(
    db: asyncpg.Connection, metric: str, sums: dict[str, Decimal], unconv: int
) -> Any:
    # counts as bigint, as the sums of the aggregate tables' counts arrive (integer division
    # would be the bug); money as numeric.
    cols = ", ".join(
        f"${i}::{'numeric' if catalogue.SUM_BY_NAME[s].unit is Unit.MONEY else 'bigint'} AS {s}"
        for i, s in enumerate(RULE_SUMS, start=4)
    )
    sql = (
        f"SELECT {metric_value_sql('$1::text', 'c', '$2::bigint')} "
        f"FROM (SELECT {cols}, $3::bigint AS unconverted) c"
    )
    return await db.fetchval(
        sql, metric, int(sums["anomaly_count"]), unconv, *(sums[s] for s in RULE_SUMS)
    )


async def test_rule_sql_computes_the_catalogue_formula(db: asyncpg.Connection) -> None:
    assert [m.value for m in Metric] == [m.name for m in catalogue.alert_metrics()]
    for metric in catalogue.alert_metrics():
        value = await _rule_value(db, metric.name, SUMS, 0)
        expected = EXPECTED[metric.name]
        # PostgreSQL divides to 20 significant digits, Python to 28.
        assert abs(value - expected) < Decimal("1e-15"), metric.name
        assert value.quantize(RATIO_EXP) == expected.quantize(RATIO_EXP), metric.name
        assert await _rule_value(db, metric.name, ZERO, 0) == metric.value(ZERO), metric.name


async def test_rule_sql_money_without_rate_is_no_data(db: asyncpg.Connection) -> None:
    for metric in catalogue.alert_metrics():
        value = await _rule_value(db, metric.name, SUMS, 1)
        needs_money = any(s.unit is Unit.MONEY for s in metric.sums)
        assert (value is None) == needs_money, metric.name


# --- every list of metrics against the catalogue --------------------------------------------


def _annotation(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    return next(a for a in args if a is not type(None)), type(None) in args


def test_the_api_model_is_the_catalogues_kpis() -> None:
    assert list(Kpis.model_fields) == [m.name for m in catalogue.kpis()]
    python_type = {Unit.COUNT: int, Unit.MONEY: Decimal, Unit.RATIO: float}
    for m in catalogue.kpis():
        field = Kpis.model_fields[m.name]
        assert _annotation(field.annotation) == (python_type[m.unit], m.nullable), m.name
        assert field.description == m.doc


@pytest.mark.parametrize(
    "path", ["crds/alertrules.yaml", "charts/molam-analytics/crds/alertrules.yaml"]
)
def test_the_alertrule_crd_enum_is_the_catalogues_alert_metrics(path: str) -> None:
    crd = yaml.safe_load((ROOT / path).read_text())
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        names = [m.name for m in catalogue.alert_metrics()]
        assert spec["properties"]["metric"]["enum"] == names, (
            f"{path}: set the metric enum to [{', '.join(names)}] (then charts/sync-crds.sh)"
        )


def test_the_dashboard_tiles_are_catalogue_kpis_in_their_unit() -> None:
    js = (STATIC / "dashboard.js").read_text()
    block = re.search(r"const KPI_TILES = \[(.*?)\];", js, re.S)
    assert block is not None
    tiles = re.findall(r'\["(\w+)", "(\w+)"\]', block.group(1))
    assert tiles
    kpis = {m.name: m for m in catalogue.kpis()}
    for name, unit in tiles:
        assert name in kpis and kpis[name].unit.value == unit, name
    html = (STATIC / "index.html").read_text()
    assert re.findall(r'data-kpi="(\w+)"', html) == [name for name, _ in tiles]


def test_the_docs_list_the_alert_metrics() -> None:
    text = (ROOT / "docs" / "custom-resources.md").read_text()
    bullet = re.search(r"- `metric`:(.*?);", text, re.S)
    assert bullet is not None
    listed = re.findall(r"`(\w+)`", bullet.group(1))
    assert listed == [m.name for m in catalogue.alert_metrics()]
