"""``GET /v1/kpis``: the KPIs of a time range."""

from __future__ import annotations

from fastapi import APIRouter, Response

from molam_workloads.api.deps import ResourcesDep
from molam_workloads.api.params import FiltersDep, RangeDep
from molam_workloads.api.permissions import Reader
from molam_workloads.api.queries.aggregates import kpis_of
from molam_workloads.api.routers._summary import cached_answer, header, run_grouped
from molam_workloads.api.schemas.analytics import KpiResponse, Kpis
from molam_workloads.api.schemas.common import READ_ERRORS

router = APIRouter(prefix="/v1", tags=["analytics"])


@router.get("/kpis", response_model=KpiResponse, responses=READ_ERRORS)
async def get_kpis(
    principal: Reader,
    rng: RangeDep,
    filters: FiltersDep,
    res: ResourcesDep,
) -> Response:
    """Counts, gross and net volume, refunds, fees, success, failure and refund rates and
    average ticket over [from, to), amounts in the reporting currency (the KPIs of
    ``core.catalogue``). A merchant token sees its own merchant."""
    currency = res.settings.reporting_currency

    async def compute() -> KpiResponse:
        result = await run_grouped(res, rng, filters, keys=(), reporting_currency=currency)
        return KpiResponse(
            **header(rng, filters, currency, result),
            kpis=Kpis(**kpis_of(result.rows[0] if result.rows else None, currency)),
            daily_view_days=result.daily_days,
            daily_source=result.daily_source,
        )

    params = {**rng.as_dict(), **filters.as_dict()}
    return await cached_answer(res.cache, principal, "kpis", params, compute)
