"""Notification deliveries: an alert's delivery ledger (``GET /v1/alerts/{id}/notifications``)
and test notifications of a rule (``POST /v1/alert-rules/{name}/test``).

The API never sends a notification itself: the alerts evaluator owns the destinations'
secrets and the egress policy (``ALERT_WEBHOOK_ALLOW``). A test is a row the evaluator's
notifier answers within about a second (``ALERTS_NOTIFY_POLL_SECONDS``); this route waits for
it, bounded, and returns each destination's outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from molam_workloads.api.auth import deny
from molam_workloads.api.deps import PoolDep
from molam_workloads.api.errors import NotFound, Unavailable
from molam_workloads.api.params import PageDep
from molam_workloads.api.permissions import AlertManager, Reader
from molam_workloads.api.schemas.alerts import RuleName
from molam_workloads.api.schemas.common import ErrorResponse, error_responses

router = APIRouter(tags=["alerts"])
# Longer than the notifier's poll plus one webhook timeout (5 s by default) and an
# Alertmanager's (10 s), so a healthy evaluator always answers in time.
TEST_WAIT_SECONDS = 20.0
TEST_POLL_SECONDS = 0.2


class DeliveryOut(BaseModel):
    id: int
    at: datetime
    kind: str = Field(description="webhook or alertmanager")
    status: str = Field(description="firing, resolved or test: what was announced")
    destination: str = Field(description="The destination's host[:port] (never the full URL).")
    attempt: int = Field(description="1 for the first try of this notification, then 2, 3…")
    ok: bool
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    latency_ms: float
    error: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int


class TestOutcome(BaseModel):
    kind: str = Field(description="webhook or alertmanager")
    destination: str
    ok: bool
    status_code: int | None
    latency_ms: float
    error: str | None


class TestResult(BaseModel):
    rule: str
    test_id: int
    results: list[TestOutcome] = Field(
        description="One per destination of the rule (webhooks, then Alertmanagers)."
    )


@router.get(
    "/v1/alerts/{alert_id}/notifications",
    response_model=DeliveryPage,
    responses=error_responses(401, 403, 404, 422),
)
async def list_alert_notifications(
    request: Request,
    principal: Reader,
    alert_id: Annotated[int, Path(ge=1, le=2**63 - 1, description="The alert's id.")],
    page: PageDep,
    pool: PoolDep,
) -> DeliveryPage:
    """Every notification attempt for the alert, oldest first; readable by whoever may read
    the alert (another merchant's alert is a 404, as a missing one)."""
    limit, offset = page
    async with pool.acquire() as conn:
        owner = await conn.fetchrow(
            "SELECT scope->>'merchantId' AS merchant_id FROM analytics_alerts WHERE id = $1",
            alert_id,
        )
        missing = NotFound(f"no alert {alert_id}")
        if owner is None:
            raise missing
        if not principal.can_read_merchant(owner["merchant_id"]):
            deny(request, 404, "resource belongs to another merchant", principal)
            raise missing
        rows = await conn.fetch(
            """
            SELECT id, at, kind, status, destination, attempt, ok, status_code, latency_ms, error
            FROM analytics_alert_deliveries WHERE alert_id = $1
            ORDER BY id LIMIT $2 OFFSET $3
            """,
            alert_id,
            limit,
            offset,
        )
        total = await conn.fetchval(
            "SELECT count(*) FROM analytics_alert_deliveries WHERE alert_id = $1", alert_id
        )
    return DeliveryPage(
        items=[DeliveryOut.model_validate(dict(r)) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post(
    "/v1/alert-rules/{name}/test",
    response_model=TestResult,
    responses={
        **error_responses(401, 403, 404, 422),
        503: {
            "model": ErrorResponse,
            "description": "The alerts evaluator did not send the test in time",
        },
    },
)
async def test_alert_rule(
    principal: AlertManager,
    name: Annotated[RuleName, Path(description="The rule's name.")],
    pool: PoolDep,
) -> TestResult:
    """Send one test notification (labels plus ``test="true"``) to each of the rule's webhooks
    and Alertmanagers, once, and answer each outcome; every attempt is in the ledger."""
    async with pool.acquire() as conn:
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM analytics_alert_rules WHERE name = $1)", name
        ):
            raise NotFound(f"no alert rule named {name!r}")
        test_id: int = await conn.fetchval(
            "INSERT INTO analytics_alert_tests (rule_name, requested_by) VALUES ($1, $2) "
            "RETURNING id",
            name,
            principal.sub,
        )
    deadline = time.monotonic() + TEST_WAIT_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(TEST_POLL_SECONDS)
        results = await pool.fetchval(
            "SELECT results::text FROM analytics_alert_tests WHERE id = $1 AND done_at IS NOT NULL",
            test_id,
        )
        if results is not None:
            return TestResult(
                rule=name,
                test_id=test_id,
                results=[TestOutcome.model_validate(r) for r in json.loads(results)],
            )
    raise Unavailable(
        f"the alerts evaluator did not send test {test_id} within {TEST_WAIT_SECONDS:g} s: "
        "is 'molam-analytics alerts' running? It will still send it when it runs.",
        {"testId": test_id},
    )
