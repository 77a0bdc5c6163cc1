"""What the summary routes share: cached JSON answers and the echo of range and filters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Response
from pydantic import BaseModel

from molam_workloads.api.auth import Principal
from molam_workloads.api.cache import ResponseCache, cache_key
from molam_workloads.api.params import TimeRange
from molam_workloads.api.queries.aggregates import Filters
from molam_workloads.api.schemas.analytics import FiltersOut, RangeOut

JSON = "application/json"


async def cached_answer(
    cache: ResponseCache,
    principal: Principal,
    endpoint: str,
    params: dict[str, Any],
    compute: Callable[[], Awaitable[BaseModel]],
) -> Response:
    """The cached JSON body for (role, merchant, params), or ``compute()``'s, then cached.

    ``params`` must hold every input of the answer, including the merchant filter that the
    permissions resolved; the key adds the caller's role and merchant on top.
    """
    key = cache_key(endpoint, principal.cache_scope, params)
    body = await cache.get(key)
    if body is not None:
        return Response(body, media_type=JSON, headers={"X-Cache": "hit"})
    model = await compute()
    body = model.model_dump_json(by_alias=True).encode()
    await cache.set(key, body)
    return Response(body, media_type=JSON, headers={"X-Cache": "miss"})


def echo(rng: TimeRange, filters: Filters) -> tuple[RangeOut, FiltersOut]:
    return (
        RangeOut(from_=rng.start, to=rng.end, tz=rng.tz_name),
        FiltersOut(**filters.as_dict()),
    )
