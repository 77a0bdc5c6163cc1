from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


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


class Kpis(BaseModel):
    tx_count: int = Field(description="All transactions, every type and status.")
    succeeded_count: int
    failed_count: int
    pending_count: int
    payment_count: int = Field(description="Succeeded payments (converted currencies only).")
    gross_volume: Decimal = Field(description="Succeeded payments' volume, reporting currency.")
    refund_count: int = Field(description="Succeeded refunds (converted currencies only).")
    refund_volume: Decimal
    fees: Decimal
    net_volume: Decimal = Field(description="gross_volume - refund_volume - fees.")
    success_rate: float | None = Field(description="succeeded / (succeeded + failed).")
    avg_ticket: Decimal | None = Field(description="gross_volume / payment_count.")


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
