"""``GET /health`` (no auth): PostgreSQL, Redis and Kafka each checked; 503 if one is down.
``GET /ready`` (no auth, the pods' readiness probe): PostgreSQL alone, the one service an answer
needs (Redis is a cache with a fallback and Kafka is off the request path), so that their
outages do not take every API pod out of its Service.

Anyone may ask, so the answer says only up or down: why a check failed (an error's text names
hosts, users and certificates) goes to the log, and into the answer only for an admin or ops
token, with how long the API has been waiting for the service. A service found down starts the
API's wait for it (``core.faults.outage("api", <service>)``): logged once, then once per
interval with a count, and ``analytics_waiting_for`` is 1 until a check finds it up again."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from molam_workloads.api.auth import ALERT_MANAGERS, authenticate
from molam_workloads.api.deps import KafkaOptionsDep, PoolDep, RedisDep, get_resources
from molam_workloads.api.errors import ApiError
from molam_workloads.core.faults import Outage
from molam_workloads.core.kafka import bootstrap_addresses
from molam_workloads.core.redact import redact_urls_in

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])
CHECK_TIMEOUT = 2.0


class Check(BaseModel):
    status: str  # up | down
    latency_ms: float | None = None
    error: str | None = None
    waiting_seconds: float | None = None  # down: how long the API has been waiting for it


class Health(BaseModel):
    status: str  # ok | degraded
    checks: dict[str, Check]


async def _timed(wait: Outage, probe: Any) -> Check:
    start = time.perf_counter()
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:  # any failure of a probe means the service is down
        error = redact_urls_in(f"{type(exc).__name__}: {exc}")[:300]
        wait.failed(exc, "health check")
        return Check(status="down", error=error, waiting_seconds=round(wait.waited(), 1))
    wait.recovered()
    return Check(status="up", latency_ms=round((time.perf_counter() - start) * 1000, 2))


def _sees_details(request: Request) -> bool:
    """Whether the caller holds a valid admin or ops token (none at all: no, silently)."""
    if "authorization" not in request.headers:
        return False
    resources = get_resources(request)
    try:
        principal = authenticate(request, resources.token_policy, resources.tokens)
    except ApiError:  # refused, logged and counted by authenticate; the statuses still answer
        return False
    return principal.role in ALERT_MANAGERS


async def _kafka(options: dict[str, Any]) -> None:
    """Up when one bootstrap server accepts a connection: over TLS, with the clients' own
    context, when the settings say TLS, so that a wrong CA or an expired certificate shows
    here. (SASL credentials are only checked by a Kafka session: the clients' errors and the
    operator's lag probe report those.)"""
    errors = []
    context = options.get("ssl_context")
    for host, port in bootstrap_addresses(options):
        try:
            _, writer = await asyncio.open_connection(host, port, ssl=context)
        except OSError as exc:  # ssl.SSLError included: the handshake's reason is kept
            errors.append(f"{host}:{port}: {exc}")
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise ConnectionError("; ".join(errors))


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is down"}},
)
async def health(
    request: Request, pool: PoolDep, redis: RedisDep, kafka: KafkaOptionsDep
) -> JSONResponse:
    """Each check's status; its latency, error and time waited too for an admin or ops bearer
    token."""
    resources = get_resources(request)
    pg, rd, kf = await asyncio.gather(
        _timed(resources.outage("postgresql"), pool.fetchval("SELECT 1")),
        _timed(resources.outage("redis"), redis.ping()),
        _timed(resources.outage("kafka"), _kafka(kafka)),
    )
    return _answer(request, {"postgresql": pg, "redis": rd, "kafka": kf})


@router.get(
    "/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "PostgreSQL is down"}},
)
async def ready(request: Request, pool: PoolDep) -> JSONResponse:
    """Whether this pod can answer: PostgreSQL's check alone, with the same detail rules."""
    pg = await _timed(get_resources(request).outage("postgresql"), pool.fetchval("SELECT 1"))
    return _answer(request, {"postgresql": pg})


def _answer(request: Request, checks: dict[str, Check]) -> JSONResponse:
    """200 when every check is up, else 503; statuses only unless an admin or ops token asks."""
    ok = all(c.status == "up" for c in checks.values())
    if not _sees_details(request):
        checks = {name: Check(status=c.status) for name, c in checks.items()}
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)
