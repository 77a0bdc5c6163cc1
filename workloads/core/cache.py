"""Redis client ownership and the key names shared by the consumer and the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date

from redis.asyncio import Redis
from redis.exceptions import RedisError

from molam_workloads.core.errors import ServiceUnavailable
from molam_workloads.core.redact import redact_url
from molam_workloads.core.settings import RedisSettings

# The runbook clears caches with these patterns: `analytics:*` and `live:merchant:<id>:*`.
CACHE_PREFIX = "analytics:"
PLATFORM = "_all"  # live counters across every merchant


def live_key(merchant_id: str | None, day: date) -> str:
    """Hash of today's absolute counters for one merchant (or the whole platform)."""
    return f"live:merchant:{merchant_id or PLATFORM}:{day.isoformat()}"


@asynccontextmanager
async def create_redis(settings: RedisSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
    try:
        await client.ping()  # type: ignore[misc]  # redis-py types ping as sync|async
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise ServiceUnavailable(
            f"Redis at {redact_url(settings.redis_url)} is unreachable: {exc}"
        ) from None
    try:
        yield client
    finally:
        await client.aclose()
