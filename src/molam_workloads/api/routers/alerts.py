"""Alerts: list and read (``/v1/alerts``), acknowledge and resolve (admin, ops)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request

from molam_workloads.api.deps import PoolDep
from molam_workloads.api.errors import Conflict, NotFound
from molam_workloads.api.params import PageDep
from molam_workloads.api.permissions import AlertManager, Reader, ScopedMerchant, ensure_visible
from molam_workloads.api.queries.alerts import alert_document, get_alert, list_alerts, transition
from molam_workloads.api.schemas.alerts import AlertAction, AlertOut, AlertPage
from molam_workloads.api.schemas.common import error_responses

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The alert's id.")]


class AlertState(StrEnum):
    firing = "firing"
    acknowledged = "acknowledged"
    resolved = "resolved"


class SeverityFilter(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


@router.get("", response_model=AlertPage, responses=error_responses(401, 403, 422))
async def list_alerts_route(
    principal: Reader,
    merchant_id: ScopedMerchant,
    page: PageDep,
    pool: PoolDep,
    state: Annotated[AlertState | None, Query()] = None,
    severity: Annotated[SeverityFilter | None, Query()] = None,
) -> AlertPage:
    """Newest first. ``merchant_id`` keeps the alerts of rules scoped to that merchant; a
    merchant token sees only those scoped to itself."""
    limit, offset = page
    async with pool.acquire() as conn:
        rows, total = await list_alerts(
            conn,
            state.value if state else None,
            severity.value if severity else None,
            merchant_id,
            limit,
            offset,
        )
    return AlertPage(
        items=[AlertOut.model_validate(alert_document(r)) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{alert_id}", response_model=AlertOut, responses=error_responses(401, 403, 404, 422))
async def get_alert_route(
    request: Request, principal: Reader, alert_id: AlertId, pool: PoolDep
) -> AlertOut:
    """One alert; a merchant token reads only the alerts of rules scoped to itself (any other
    is a 404, as a missing one)."""
    missing = NotFound(f"no alert {alert_id}")
    async with pool.acquire() as conn:
        row = await get_alert(conn, alert_id)
    if row is None:
        raise missing
    doc = alert_document(row)
    ensure_visible(request, principal, doc["scope"].get("merchantId"), missing)
    return AlertOut.model_validate(doc)


async def _act(
    pool: PoolDep, alert_id: int, actor: str, event: str, allowed_from: set[str], body: AlertAction
) -> AlertOut:
    async with pool.acquire() as conn, conn.transaction():
        row = await get_alert(conn, alert_id, for_update=True)
        if row is None:
            raise NotFound(f"no alert {alert_id}")
        if row["state"] not in allowed_from:
            raise Conflict(
                f"alert {alert_id} is {row['state']}: it cannot be {event}",
                {"state": row["state"]},
            )
        await transition(conn, alert_id, event, actor, body.comment)
        row = await get_alert(conn, alert_id)
    assert row is not None
    return AlertOut.model_validate(alert_document(row))


@router.post(
    "/{alert_id}/acknowledge",
    response_model=AlertOut,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def acknowledge_alert(
    principal: AlertManager,
    alert_id: AlertId,
    pool: PoolDep,
    body: Annotated[AlertAction | None, Body()] = None,
) -> AlertOut:
    """firing -> acknowledged, recording who (the token's ``sub``) in the alert's history."""
    return await _act(
        pool, alert_id, principal.sub, "acknowledged", {"firing"}, body or AlertAction()
    )


@router.post(
    "/{alert_id}/resolve",
    response_model=AlertOut,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def resolve_alert(
    principal: AlertManager,
    alert_id: AlertId,
    pool: PoolDep,
    body: Annotated[AlertAction | None, Body()] = None,
) -> AlertOut:
    """firing or acknowledged -> resolved, recording who in the alert's history."""
    return await _act(
        pool,
        alert_id,
        principal.sub,
        "resolved",
        {"firing", "acknowledged"},
        body or AlertAction(),
    )
