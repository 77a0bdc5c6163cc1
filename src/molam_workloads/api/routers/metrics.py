"""``GET /metrics`` (no auth): the process's Prometheus metrics, text format.

Besides the API's own, it publishes the materialized views' last refresh (duration and age),
read from the database at scrape time: the ``refresh-views`` job that records it is never
scraped (see core.metrics.ViewRefreshes).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from molam_workloads.api.deps import PoolDep
from molam_workloads.core.metrics import VIEW_REFRESHES, observe_pool

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(pool: PoolDep) -> Response:
    observe_pool(pool)
    await VIEW_REFRESHES.update(pool)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
