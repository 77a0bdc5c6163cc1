"""What the summary routes share: cached JSON answers and the echo of range and filters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Response
from pydantic import BaseModel

from molam_workloads.api.auth import Principal
from molam_workloads.api.cache import ResponseCache, cache_key, cached_response
from molam_workloads.api.deps import Resources
from molam_workloads.api.fastpath import learn
from molam_workloads.api.params import TimeRange
from molam_workloads.api.queries.aggregates import Filters, Grouped, grouped
from molam_workloads.api.schemas.analytics import FiltersOut, RangeOut


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
    learn(key)  # every dependency passed: fastpath may answer this very request from Redis
    body = await cache.get(key)
    if body is not None:
        return cached_response(body, "hit")
    model = await compute()
    body = model.model_dump_json(by_alias=True).encode()
    await cache.set(key, body)
    return cached_response(body, "miss")


def echo(rng: TimeRange, filters: Filters) -> tuple[RangeOut, FiltersOut]:
    return (
        RangeOut(from_=rng.start, to=rng.end, tz=rng.tz_name),
        FiltersOut(**filters.as_dict()),
    )


async def run_grouped(
    res: Resources,
    rng: TimeRange,
    filters: Filters,
    **query: Any,
) -> Grouped:
    """``grouped`` over the request's range and filters; a stale merchant-less rollup found on
    the way is queued for rebuilding (off the request)."""
    async with res.pool.acquire() as conn:
        result = await grouped(
            conn, start=rng.start, end=rng.end, filters=filters, states=res.states, **query
        )
    if result.rollup_behind:
        res.rollup.request()
    return result


def header(rng: TimeRange, filters: Filters, currency: str, result: Grouped) -> dict[str, Any]:
    """The fields every summary answer starts with: what was asked, what was not converted, and
    how fresh the data is."""
    rng_out, filters_out = echo(rng, filters)
    return {
        "range": rng_out,
        "currency": currency,
        "filters": filters_out,
        "unconverted_currencies": result.unconverted,
        "data_as_of": result.data_as_of,
    }
