"""``GET /v1/me``: what the token grants (the dashboard uses it to pick its views)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from molam_workloads.api.deps import CurrentPrincipal, SettingsDep
from molam_workloads.api.schemas.common import error_responses

router = APIRouter(prefix="/v1", tags=["session"])


class Me(BaseModel):
    sub: str
    role: str
    merchant_id: str | None
    reads_all_merchants: bool
    reporting_currency: str


@router.get("/me", response_model=Me, responses=error_responses(401, 403))
async def me(principal: CurrentPrincipal, settings: SettingsDep) -> Me:
    return Me(
        sub=principal.sub,
        role=principal.role.value,
        merchant_id=principal.merchant_id,
        reads_all_merchants=principal.reads_all_merchants,
        reporting_currency=settings.reporting_currency,
    )
