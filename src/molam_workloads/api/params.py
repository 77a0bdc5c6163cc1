"""Query parameters shared by the analytics routes, parsed and checked once (422 on error).

Their OpenAPI schema says what they accept: time zones are an enum of the IANA names, instants
are ISO 8601 strings (never the Unix times pydantic would also read). What a schema cannot
say, that ``from`` is before ``to`` and how long a range may be, its descriptions say, and the
422 for it carries ``details.rule = "range"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from fastapi import Depends, Query, Request
from pydantic import BeforeValidator, WithJsonSchema

from molam_workloads.api.deps import get_resources
from molam_workloads.api.errors import InvalidParams
from molam_workloads.api.permissions import ScopedMerchant
from molam_workloads.api.queries.aggregates import Filters

DEFAULT_RANGE = timedelta(days=7)
_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_MAX = datetime(2200, 1, 1, tzinfo=UTC)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_8601(value: object) -> object:
    """Refuse query values that are not ISO 8601 (pydantic reads ``0.5`` as a Unix time)."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T00:00:00Z")
    return value


# An instant as the schema's date-time says: RFC 3339 / ISO 8601, never a number.
IsoDateTime = Annotated[
    datetime,
    BeforeValidator(_iso_8601),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
# A range bound: a date-time, or a date (its midnight), with or without an offset (read in `tz`).
RangeBound = Annotated[
    datetime,
    BeforeValidator(_iso_8601),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}
    ),
]


@cache
def time_zone_names() -> list[str]:
    return sorted(available_timezones())


@cache
def _zone_set() -> frozenset[str]:
    return frozenset(time_zone_names())


def _range_error(message: str, param: str) -> InvalidParams:
    return InvalidParams(message, {"param": param, "rule": "range"})


@dataclass(frozen=True)
class TimeRange:
    start: datetime  # aware, UTC
    end: datetime
    tz_name: str
    tz: ZoneInfo

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "tz": self.tz_name}


def parse_tz(name: str) -> ZoneInfo:
    try:
        if name not in _zone_set():
            raise KeyError(name)
        return ZoneInfo(name)
    except Exception:
        raise InvalidParams(
            f"tz {name!r} is not an IANA time zone name (e.g. UTC, Africa/Dakar)",
            {"param": "tz"},
        ) from None


def _aware(value: datetime, tz: ZoneInfo, param: str) -> datetime:
    try:
        aware = value if value.tzinfo is not None else value.replace(tzinfo=tz)
        result = aware.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidParams(f"{param} is out of range", {"param": param}) from None
    if not _MIN <= result <= _MAX:
        raise _range_error(f"{param} must be between 1970 and 2200", param)
    return result


async def time_range(
    request: Request,
    from_: Annotated[
        RangeBound | None,
        Query(
            alias="from",
            description="Start (inclusive), ISO 8601 date or date-time; without an offset it "
            "is read in `tz`. Default: `to` minus 7 days. It must be before `to` (an empty "
            "range, `from` = `to`, is refused), both within 1970-2200 and at most "
            "API_MAX_RANGE_DAYS (default 400) days apart: otherwise 422 with "
            "`details.rule` = `range`.",
        ),
    ] = None,
    to: Annotated[
        RangeBound | None,
        Query(
            description="End (exclusive), after `from` (see `from` for the range's rules). "
            "Default: the start of the next hour."
        ),
    ] = None,
    tz: Annotated[
        str,
        Query(
            description="IANA time zone of day boundaries (and of dates given without offset).",
            json_schema_extra={"enum": time_zone_names()},
        ),
    ] = "UTC",
) -> TimeRange:
    max_days = get_resources(request).settings.api_max_range_days  # not a dependency: one less
    zone = parse_tz(tz)
    if to is None:
        now = datetime.now(UTC)
        end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    else:
        end = _aware(to, zone, "to")
    start = _aware(from_, zone, "from") if from_ is not None else end - DEFAULT_RANGE
    if start >= end:
        raise InvalidParams(
            "'from' must be before 'to'",
            {"param": "from", "rule": "range", "from": str(start), "to": str(end)},
        )
    if end - start > timedelta(days=max_days):
        raise _range_error(f"the range may span at most {max_days} days", "from")
    return TimeRange(start=start, end=end, tz_name=tz, tz=zone)


async def filters(
    merchant_id: ScopedMerchant,
    country: Annotated[
        str | None, Query(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2, e.g. SN.")
    ] = None,
    channel: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    currency: Annotated[
        str | None, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. XOF.")
    ] = None,
) -> Filters:
    return Filters(merchant_id=merchant_id, country=country, channel=channel, currency=currency)


RangeDep = Annotated[TimeRange, Depends(time_range)]
FiltersDep = Annotated[Filters, Depends(filters)]


async def page_params(
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip.")] = 0,
) -> tuple[int, int]:
    return limit, offset


PageDep = Annotated[tuple[int, int], Depends(page_params)]
