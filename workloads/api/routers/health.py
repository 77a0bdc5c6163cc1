"""``GET /health`` (no auth): PostgreSQL, Redis and Kafka each checked; 503 if one is down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from molam_workloads.api.deps import KafkaOptionsDep, PoolDep, RedisDep
from molam_workloads.core.kafka import bootstrap_addresses

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT = 2.0


class Check(BaseModel):
    status: str  # up | down
    latency_ms: float | None = None
    error: str | None = None


class Health(BaseModel):
    status: str  # ok | degraded
    checks: dict[str, Check]


async def _timed(probe: Any) -> Check:
    start = time.perf_counter()
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:  # any failure of a probe means the service is down
        return Check(status="down", error=f"{type(exc).__name__}: {exc}"[:300])
    return Check(status="up", latency_ms=round((time.perf_counter() - start) * 1000, 2))


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
async def health(pool: PoolDep, redis: RedisDep, kafka: KafkaOptionsDep) -> JSONResponse:
    pg, rd, kf = await asyncio.gather(
        _timed(pool.fetchval("SELECT 1")),
        _timed(redis.ping()),
        _timed(_kafka(kafka)),
    )
    checks = {"postgresql": pg, "redis": rd, "kafka": kf}
    ok = all(c.status == "up" for c in checks.values())
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)
