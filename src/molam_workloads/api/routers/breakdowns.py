"""``GET /v1/breakdowns/{dimension}``: KPIs per merchant, country, channel or currency."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from molam_workloads.api.deps import ResourcesDep
from molam_workloads.api.params import FiltersDep, RangeDep
from molam_workloads.api.permissions import Reader
from molam_workloads.api.queries.aggregates import Key, Ranking, kpis_of
from molam_workloads.api.routers._summary import cached_answer, header, run_grouped
from molam_workloads.api.schemas.analytics import BreakdownResponse, BreakdownRow
from molam_workloads.api.schemas.common import READ_ERRORS

router = APIRouter(prefix="/v1", tags=["analytics"])


class Dimension(StrEnum):
    merchant = "merchant"
    country = "country"
    channel = "channel"
    currency = "currency"


_KEYS = {
    Dimension.merchant: Key("key", "merchant_id", "merchant_id"),
    Dimension.country: Key("key", "country::text", "country::text"),
    Dimension.channel: Key("key", "channel", "channel"),
    Dimension.currency: Key("key", "currency::text", "currency::text"),
}


@router.get("/breakdowns/{dimension}", response_model=BreakdownResponse, responses=READ_ERRORS)
async def get_breakdown(
    principal: Reader,
    dimension: Annotated[Dimension, Path(description="merchant, country, channel, currency")],
    rng: RangeDep,
    filters: FiltersDep,
    res: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most rows returned.")] = 100,
) -> Response:
    """KPIs per value of the dimension, largest gross volume first. A merchant token is scoped
    to its own merchant, so its breakdown by merchant holds its own row only."""
    currency = res.settings.reporting_currency

    async def compute() -> BreakdownResponse:
        result = await run_grouped(
            res,
            rng,
            filters,
            keys=(_KEYS[dimension],),
            reporting_currency=currency,
            per_merchant=dimension is Dimension.merchant,
            ranking=Ranking("gross_volume", limit),
        )
        return BreakdownResponse(
            **header(rng, filters, currency, result),
            dimension=dimension.value,
            rows=[BreakdownRow(key=r["key"], **kpis_of(r, currency)) for r in result.rows],
        )

    params = {
        **rng.as_dict(),
        **filters.as_dict(),
        "dimension": dimension.value,
        "limit": limit,
    }
    return await cached_answer(res.cache, principal, "breakdown", params, compute)
