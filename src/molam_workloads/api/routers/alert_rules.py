"""Alert rules CRUD: ``/v1/alert-rules``. The document is the ``AlertRule`` custom resource's
spec (camelCase), stored through ``core.rules``. Rules that come from a custom resource
(``source = crd``) are read-only here: change the custom resource instead (409).
``POST /v1/alert-rules/{name}/backtest`` replays a rule over the stored aggregates
(``core.backtest``)."""

from __future__ import annotations

from typing import Annotated, cast

import asyncpg
from fastapi import APIRouter, Path, Request, Response, status

from molam_workloads.api.auth import Principal
from molam_workloads.api.deps import PoolDep, SettingsDep
from molam_workloads.api.errors import Conflict, InvalidParams, NotFound
from molam_workloads.api.params import PageDep, RangeDep
from molam_workloads.api.permissions import (
    AlertManager,
    Reader,
    ScopedMerchant,
    ensure_visible,
)
from molam_workloads.api.queries.rules import as_document, get_rule, list_rules, lock_name
from molam_workloads.api.schemas.alerts import (
    AlertRuleCreate,
    AlertRuleOut,
    AlertRulePage,
    BacktestOut,
    RuleName,
)
from molam_workloads.api.schemas.common import error_responses
from molam_workloads.core.backtest import backtest, load_rule
from molam_workloads.core.rules import AlertRuleSpec, delete_rule, save_rule

router = APIRouter(prefix="/v1/alert-rules", tags=["alert rules"])
NamePath = Annotated[RuleName, Path(description="The rule's name.")]


def _view(row: asyncpg.Record, principal: Principal) -> AlertRuleOut:
    # Webhook URLs carry credentials: only staff roles see where a rule notifies.
    return AlertRuleOut.model_validate(as_document(row, with_notify=principal.reads_all_merchants))


def _crd_conflict(name: str) -> Conflict:
    return Conflict(
        f"alert rule {name!r} is managed by an AlertRule custom resource: edit the custom "
        f"resource instead (kubectl edit alertrule {name})",
        {"source": "crd"},
    )


@router.get("", response_model=AlertRulePage, responses=error_responses(401, 403, 422))
async def list_alert_rules(
    principal: Reader, merchant_id: ScopedMerchant, page: PageDep, pool: PoolDep
) -> AlertRulePage:
    """Rules by name. ``merchant_id`` keeps the rules scoped to that merchant; a merchant token
    sees only the rules scoped to itself, without their ``notify`` targets."""
    limit, offset = page
    async with pool.acquire() as conn:
        rows, total = await list_rules(conn, merchant_id, limit, offset)
    return AlertRulePage(
        items=[_view(r, principal) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{name}", response_model=AlertRuleOut, responses=error_responses(401, 403, 404, 422))
async def get_alert_rule(
    request: Request, principal: Reader, name: NamePath, pool: PoolDep
) -> AlertRuleOut:
    """One rule; a merchant token reads only a rule scoped to itself (any other is a 404), and
    without its ``notify`` targets."""
    missing = NotFound(f"no alert rule named {name!r}")
    async with pool.acquire() as conn:
        row = await get_rule(conn, name)
    if row is None:
        raise missing
    ensure_visible(request, principal, row["scope_merchant_id"], missing)
    return _view(row, principal)


@router.post(
    "",
    response_model=AlertRuleOut,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 409, 422),
)
async def create_alert_rule(
    principal: AlertManager, body: AlertRuleCreate, pool: PoolDep
) -> AlertRuleOut:
    async with pool.acquire() as conn, conn.transaction():
        await lock_name(conn, body.name)
        existing = await get_rule(conn, body.name)
        if existing is not None:
            raise Conflict(
                f"alert rule {body.name!r} already exists: PUT /v1/alert-rules/{body.name} "
                "replaces it",
                {"source": existing["source"]},
            )
        await save_rule(
            cast(asyncpg.Connection, conn), name=body.name, source="api", spec=body.spec
        )
        row = await get_rule(conn, body.name)
    assert row is not None
    return AlertRuleOut.model_validate(as_document(row))


@router.put("/{name}", response_model=AlertRuleOut, responses=error_responses(401, 403, 409, 422))
async def replace_alert_rule(
    principal: AlertManager, name: NamePath, spec: AlertRuleSpec, pool: PoolDep
) -> AlertRuleOut:
    """Create or replace the rule with this spec document."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_name(conn, name)
        existing = await get_rule(conn, name)
        if existing is not None and existing["source"] == "crd":
            raise _crd_conflict(name)
        await save_rule(cast(asyncpg.Connection, conn), name=name, source="api", spec=spec)
        row = await get_rule(conn, name)
    assert row is not None
    return AlertRuleOut.model_validate(as_document(row))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def delete_alert_rule(principal: AlertManager, name: NamePath, pool: PoolDep) -> Response:
    """Delete the rule; its past alerts stay."""
    async with pool.acquire() as conn, conn.transaction():
        await lock_name(conn, name)
        existing = await get_rule(conn, name)
        if existing is None:
            raise NotFound(f"no alert rule named {name!r}")
        if existing["source"] == "crd":
            raise _crd_conflict(name)
        await delete_rule(cast(asyncpg.Connection, conn), name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{name}/backtest",
    response_model=BacktestOut,
    responses=error_responses(401, 403, 404, 422),
)
async def backtest_alert_rule(
    request: Request,
    principal: Reader,
    name: NamePath,
    period: RangeDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> BacktestOut:
    """When the rule would have fired and resolved between ``from`` and ``to`` (at most now,
    31 days), replayed over the stored aggregates with its window and ``for``: once a minute
    where minute aggregates are kept, once an hour before. Whoever may read the rule may
    backtest it."""
    missing = NotFound(f"no alert rule named {name!r}")
    async with pool.acquire() as conn:
        rule = await load_rule(conn, name)
        if rule is None:
            raise missing
        ensure_visible(request, principal, rule["scope_merchant_id"], missing)
        try:
            result = await backtest(
                conn,
                rule,
                period.start,
                period.end,
                reporting_currency=settings.reporting_currency,
            )
        except ValueError as exc:
            raise InvalidParams(str(exc), {"param": "from"}) from None
    return BacktestOut.model_validate({"rule": result.rule, **result.document()})
