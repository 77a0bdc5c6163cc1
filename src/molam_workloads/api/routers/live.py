"""Live counters for today (UTC): ``GET /v1/live`` and ``GET /v1/merchants/{id}/live``.

Read from the Redis hash the consumer keeps (``core.cache.live_key``: ``live:merchant:<id>:<day>``,
the platform's ``live:platform:<day>``), or from PostgreSQL when the hash is missing, is not the
owner's (``owner`` field), or Redis is down (``source`` tells which).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Path
from redis.exceptions import RedisError

from molam_workloads.api.cache import ResponseCache
from molam_workloads.api.deps import CacheDep, PoolDep, SettingsDep
from molam_workloads.api.permissions import Reader, ScopedMerchant
from molam_workloads.api.queries.live import counters_of, live_from_db
from molam_workloads.api.schemas.analytics import LiveResponse
from molam_workloads.api.schemas.common import READ_ERRORS
from molam_workloads.api.settings import ApiSettings
from molam_workloads.core.cache import live_key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["live"])


async def _live(
    merchant_id: str | None, cache: ResponseCache, pool: asyncpg.Pool, settings: ApiSettings
) -> LiveResponse:
    day = datetime.now(UTC).date()
    try:
        held: dict[str, str] = await cache.redis.hgetall(live_key(merchant_id, day))  # type: ignore[misc]
    except (RedisError, OSError) as exc:
        # Reported with the cache's: one line per interval while Redis is away, not per request.
        cache.outage.failed(exc, "live counters; read from PostgreSQL")
        held = {}
    else:
        cache.outage.recovered()
    counters = counters_of(held, merchant_id)
    if counters:
        source = "redis"
    else:
        async with pool.acquire() as conn:
            counters = await live_from_db(conn, merchant_id, day, settings.reporting_currency)
        source = "postgresql"
    return LiveResponse(
        merchant_id=merchant_id, day=day.isoformat(), source=source, counters=counters
    )


@router.get("/live", response_model=LiveResponse, responses=READ_ERRORS)
async def get_live(
    principal: Reader,
    merchant_id: ScopedMerchant,
    cache: CacheDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> LiveResponse:
    """Today's counters of one merchant, or of the whole platform when no merchant is named
    (staff roles only; a merchant token always gets its own)."""
    return await _live(merchant_id, cache, pool, settings)


@router.get("/merchants/{merchant_id}/live", response_model=LiveResponse, responses=READ_ERRORS)
async def get_merchant_live(
    principal: Reader,
    merchant_id: Annotated[str, Path(min_length=1, max_length=128)],
    cache: CacheDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> LiveResponse:
    """Today's counters of the merchant in the path (a merchant token: its own only)."""
    return await _live(merchant_id, cache, pool, settings)
