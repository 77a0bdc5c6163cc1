"""``GET /v1/timeseries``: KPIs per hour or per (time zone aware) day."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from molam_workloads.api.deps import ResourcesDep
from molam_workloads.api.errors import InvalidParams
from molam_workloads.api.params import FiltersDep, RangeDep, TimeRange
from molam_workloads.api.permissions import Reader
from molam_workloads.api.queries.aggregates import Key, kpis_of, utc_aligned
from molam_workloads.api.routers._summary import cached_answer, header, run_grouped
from molam_workloads.api.schemas.analytics import Point, TimeseriesResponse
from molam_workloads.api.schemas.common import READ_ERRORS

router = APIRouter(prefix="/v1", tags=["analytics"])
MAX_POINTS = 2500


class Granularity(StrEnum):
    hour = "hour"
    day = "day"


def _buckets(rng: TimeRange, granularity: Granularity) -> list[Any]:
    if granularity is Granularity.hour:
        first = rng.start.replace(minute=0, second=0, microsecond=0)
        count = -(-(rng.end - first) // timedelta(hours=1))
        if count > MAX_POINTS:
            raise InvalidParams(f"at most {MAX_POINTS} hourly points: shorten the range")
        return [first + timedelta(hours=i) for i in range(count)]
    first_day = rng.start.astimezone(rng.tz).date()
    last_day = (rng.end - timedelta(microseconds=1)).astimezone(rng.tz).date()
    return [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]


def _bucket_start(bucket: Any, rng: TimeRange) -> datetime:
    if isinstance(bucket, datetime):
        return bucket.astimezone(rng.tz)
    assert isinstance(bucket, date)
    return datetime.combine(bucket, time(0), rng.tz)


@router.get("/timeseries", response_model=TimeseriesResponse, responses=READ_ERRORS)
async def get_timeseries(
    principal: Reader,
    rng: RangeDep,
    filters: FiltersDep,
    res: ResourcesDep,
    granularity: Annotated[Granularity, Query(description="hour or day (days in `tz`).")] = (
        Granularity.day
    ),
) -> Response:
    """KPIs per bucket over [from, to); empty buckets are present with zeros."""
    currency = res.settings.reporting_currency
    buckets = _buckets(rng, granularity)

    async def compute() -> TimeseriesResponse:
        extra: tuple[str, ...] = ()
        if granularity is Granularity.hour:
            key, mv_allowed = Key("bucket", "hour", "NULL"), False
        else:
            key = Key("bucket", "(hour AT TIME ZONE $1)::date", "day")
            extra, mv_allowed = (rng.tz_name,), utc_aligned(rng.tz, rng.start, rng.end)
        result = await run_grouped(
            res,
            rng,
            filters,
            keys=(key,),
            reporting_currency=currency,
            mv_allowed=mv_allowed,
            extra_params=extra,
        )
        by_bucket = {r["bucket"]: r for r in result.rows}
        points = [
            Point(bucket=_bucket_start(b, rng), **kpis_of(by_bucket.get(b), currency))
            for b in buckets
        ]
        return TimeseriesResponse(
            **header(rng, filters, currency, result),
            granularity=granularity.value,
            points=points,
        )

    params = {**rng.as_dict(), **filters.as_dict(), "granularity": granularity.value}
    return await cached_answer(res.cache, principal, "timeseries", params, compute)
