from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from molam_workloads.core import catalogue


class RangeOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: datetime = Field(alias="from")
    to: datetime
    tz: str


class FiltersOut(BaseModel):
    merchant_id: str | None = Field(
        description="The merchant filter applied (a merchant token is scoped to its own)."
    )
    country: str | None
    channel: str | None
    currency: str | None


_PYTHON_TYPE: dict[catalogue.Unit, type] = {
    catalogue.Unit.COUNT: int,
    catalogue.Unit.MONEY: Decimal,  # a decimal string in JSON: money is never a float
    catalogue.Unit.RATIO: float,  # a JSON number, rounded to 6 decimals from the exact quotient
}


def _kpi_fields() -> dict[str, Any]:
    """One field per KPI of ``core.catalogue``, in its order, typed by its unit; None allowed
    where the formula divides (no denominator)."""
    fields: dict[str, Any] = {}
    for m in catalogue.kpis():
        tp = _PYTHON_TYPE[m.unit]
        fields[m.name] = (tp | None if m.nullable else tp, Field(description=m.doc))
    return fields


_KPIS_DOC = """The KPIs of ``core.catalogue``. Money counts and totals cover the currencies with an
FX rate only; rates are fractions (0.2 = 20%)."""

if TYPE_CHECKING:
    Kpis = BaseModel
else:
    Kpis = create_model("Kpis", __doc__=_KPIS_DOC, **_kpi_fields())


class _Answer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    range: RangeOut
    currency: str = Field(description="The reporting currency of every amount.")
    filters: FiltersOut
    unconverted_currencies: list[str] = Field(
        description="Currencies with no FX rate at all: left out of the money totals."
    )
    data_as_of: datetime | None = Field(
        description="Event-time watermark of the data counted (RFC 3339): the end of the "
        "newest minute (else hour) holding ingested transactions, never ahead of the server's "
        "clock. null: no data yet."
    )


class KpiResponse(_Answer):
    kpis: Kpis
    daily_view_days: int = Field(
        description="Whole days answered from a daily table instead of hourly rows."
    )
    daily_source: str | None = Field(
        description="That table: mv_txn_daily_agg, or analytics_daily_rollup (the same summed "
        "over merchants) when no merchant is involved."
    )


class Point(Kpis):
    bucket: datetime = Field(description="Start of the hour or (local) day.")


class TimeseriesResponse(_Answer):
    granularity: str
    points: list[Point]


class BreakdownRow(Kpis):
    key: str | None = Field(description="The dimension's value (null: no merchant).")


class BreakdownResponse(_Answer):
    dimension: str
    rows: list[BreakdownRow]


class MerchantRow(Kpis):
    rank: int
    merchant_id: str


class TopMerchantsResponse(_Answer):
    by: str
    merchants: list[MerchantRow]


class LiveResponse(BaseModel):
    merchant_id: str | None = Field(description="null: the whole platform.")
    day: str = Field(description="UTC day of the counters.")
    source: str = Field(description="redis, or postgresql when the live key was missing.")
    counters: dict[str, str] = Field(description="Absolute values for the day, as strings.")
