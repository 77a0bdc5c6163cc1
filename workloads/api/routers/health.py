"""``GET /health`` (no auth): PostgreSQL, Redis and Kafka each checked; 503 if one is down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from molam_workloads.api.deps import PoolDep, RedisDep, SettingsDep

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


async def _kafka(bootstrap: str) -> None:
    """Up when one bootstrap server accepts a TCP connection."""
    errors = []
    for hostport in bootstrap.split(","):
        host, _, port = hostport.rpartition(":")
        try:
            _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError as exc:
            errors.append(f"{hostport}: {exc}")
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
async def health(pool: PoolDep, redis: RedisDep, settings: SettingsDep) -> JSONResponse:
    pg, rd, kf = await asyncio.gather(
        _timed(pool.fetchval("SELECT 1")),
        _timed(redis.ping()),
        _timed(_kafka(settings.kafka_bootstrap_servers)),
    )
    checks = {"postgresql": pg, "redis": rd, "kafka": kf}
    ok = all(c.status == "up" for c in checks.values())
    body = Health(status="ok" if ok else "degraded", checks=checks)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)
