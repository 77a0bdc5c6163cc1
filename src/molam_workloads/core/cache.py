"""Redis client ownership and the key names shared by the consumer and the API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date

from redis.asyncio import Redis
from redis.exceptions import RedisError

from molam_workloads.core.errors import ServiceUnavailable
from molam_workloads.core.redact import redact_url
from molam_workloads.core.settings import RedisSettings

log = logging.getLogger(__name__)

# The runbook clears caches with these patterns: `analytics:*` and `live:merchant:<id>:*`.
CACHE_PREFIX = "analytics:"
# SIRA's name of the platform-wide series (``ingest/sira.py``); live counters do not use it.
PLATFORM = "_all"


# Set by the consumer once today's live counters are all in Redis; its absence means Redis lost
# its data (FLUSHDB, a restart without persistence) and every merchant's hash is rebuilt.
LIVE_EPOCH_KEY = "live:epoch"


def live_key(merchant_id: str | None, day: date) -> str:
    """Hash of a day's absolute counters for one merchant, or for the whole platform (None).

    Merchants live under ``live:merchant:<id>:<day>`` and the platform under
    ``live:platform:<day>``: the prefixes differ, so no merchant id (``_all`` included) can name
    the platform's hash, and the fixed-width day at the end keeps merchants apart from each
    other. (The platform's hash used to be ``live:merchant:_all:<day>``; such hashes are no
    longer read or written and expire with their TTL, ``LIVE_COUNTER_TTL_SECONDS``.)
    """
    if merchant_id is None:
        return f"live:platform:{day.isoformat()}"
    return f"live:merchant:{merchant_id}:{day.isoformat()}"


def live_key_patterns(day: date) -> tuple[str, ...]:
    """SCAN patterns that match every live-counter hash of ``day`` (merchants and platform)."""
    return (f"live:merchant:*:{day.isoformat()}", live_key(None, day))


@asynccontextmanager
async def create_redis(settings: RedisSettings, *, required: bool = True) -> AsyncIterator[Redis]:
    """The process's Redis client. ``required=False``: a Redis that does not answer at start is
    logged and waited for by its users (the consumer counts without it), not a reason to exit."""
    client = Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
    try:
        await client.ping()  # type: ignore[misc]  # redis-py types ping as sync|async
    except (RedisError, OSError) as exc:
        if required:
            await client.aclose()
            raise ServiceUnavailable(
                f"Redis at {redact_url(settings.redis_url)} is unreachable: {exc}"
            ) from None
        log.warning(
            "Redis at %s is unreachable, going on without it until it answers: %s",
            redact_url(settings.redis_url),
            exc,
        )
    try:
        yield client
    finally:
        await client.aclose()
