"""``GET /v1/top-merchants``: the merchants with the most volume or transactions."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response

from molam_workloads.api.deps import ResourcesDep
from molam_workloads.api.params import RangeDep
from molam_workloads.api.permissions import StaffReader
from molam_workloads.api.queries.aggregates import Filters, kpis_of, top_merchants
from molam_workloads.api.routers._summary import cached_answer, header
from molam_workloads.api.schemas.analytics import MerchantRow, TopMerchantsResponse
from molam_workloads.api.schemas.common import READ_ERRORS

router = APIRouter(prefix="/v1", tags=["analytics"])


class RankBy(StrEnum):
    gross_volume = "gross_volume"
    tx_count = "tx_count"


@router.get("/top-merchants", response_model=TopMerchantsResponse, responses=READ_ERRORS)
async def get_top_merchants(
    principal: StaffReader,
    rng: RangeDep,
    res: ResourcesDep,
    country: Annotated[str | None, Query(pattern=r"^[A-Z]{2}$")] = None,
    channel: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    by: Annotated[RankBy, Query(description="Ranking measure.")] = RankBy.gross_volume,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    """Ranks every merchant, so it needs a role that reads all merchants (403 for a merchant)."""
    reporting = res.settings.reporting_currency
    filters = Filters(country=country, channel=channel, currency=currency)

    async def compute() -> TopMerchantsResponse:
        # One snapshot for the ranking and the winners' sums (aggregates.top_merchants).
        async with (
            res.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            result = await top_merchants(
                conn,
                start=rng.start,
                end=rng.end,
                filters=filters,
                reporting_currency=reporting,
                by=by.value,
                limit=limit,
                states=res.states,
            )
        if result.rollup_behind:  # the merchant totals lag the view: rebuilt off the request
            res.rollup.request()
        return TopMerchantsResponse(
            **header(rng, filters, reporting, result),
            by=by.value,
            merchants=[
                MerchantRow(rank=i, merchant_id=r["merchant_id"], **kpis_of(r, reporting))
                for i, r in enumerate(result.rows, start=1)
            ],
        )

    params = {**rng.as_dict(), **filters.as_dict(), "by": by.value, "limit": limit}
    return await cached_answer(res.cache, principal, "top-merchants", params, compute)
