"""Anomalies SIRA detected: ``GET /v1/anomalies``."""

from __future__ import annotations

from datetime import UTC
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query

from molam_workloads.api.deps import PoolDep
from molam_workloads.api.params import IsoDateTime, PageDep
from molam_workloads.api.permissions import Reader, ScopedMerchant
from molam_workloads.api.queries.alerts import anomaly_document, list_anomalies
from molam_workloads.api.schemas.alerts import AnomalyOut, AnomalyPage
from molam_workloads.api.schemas.common import error_responses

router = APIRouter(prefix="/v1/anomalies", tags=["anomalies"])


class Direction(StrEnum):
    spike = "spike"
    drop = "drop"


@router.get("", response_model=AnomalyPage, responses=error_responses(401, 403, 422))
async def list_anomalies_route(
    principal: Reader,
    merchant_id: ScopedMerchant,
    page: PageDep,
    pool: PoolDep,
    since: Annotated[IsoDateTime | None, Query(description="Detected at or after.")] = None,
    until: Annotated[IsoDateTime | None, Query(description="Detected before.")] = None,
    direction: Annotated[Direction | None, Query()] = None,
) -> AnomalyPage:
    """Newest first. A merchant token sees its own merchant's anomalies only (not the
    platform-wide ones)."""
    limit, offset = page
    since, until = (d.replace(tzinfo=UTC) if d and d.tzinfo is None else d for d in (since, until))
    async with pool.acquire() as conn:
        rows, total = await list_anomalies(
            conn,
            merchant_id,
            since,
            until,
            direction.value if direction else None,
            limit,
            offset,
        )
    return AnomalyPage(
        items=[AnomalyOut.model_validate(anomaly_document(r)) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )
