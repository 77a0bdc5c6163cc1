"""Redis cache of summary answers (``analytics:*`` keys, TTL ``CACHE_TTL_SECONDS``).

A key is ``analytics:<endpoint>:<role>:<merchant>:<digest of the normalised parameters>``, the
parameters including the merchant filter the permissions resolved, so one role or merchant is
never served another's answer. Redis is an optimisation: when it fails, answers are computed
uncached (and Redis is left alone for a few seconds instead of timing out on every request).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.responses import Response

from molam_workloads.core.cache import CACHE_PREFIX
from molam_workloads.core.metrics import CACHE_HITS, CACHE_MISSES

log = logging.getLogger(__name__)
_BACKOFF_SECONDS = 5.0
JSON = "application/json"


def cached_response(body: bytes, source: str) -> Response:
    """A cached JSON answer as sent; ``source``: ``hit`` or ``miss`` (the X-Cache header)."""
    return Response(body, media_type=JSON, headers={"X-Cache": source})


def cache_key(endpoint: str, scope: str, params: dict[str, Any]) -> str:
    normalised = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    digest = hashlib.sha256(normalised.encode()).hexdigest()[:32]
    return f"{CACHE_PREFIX}{endpoint}:{scope}:{digest}"


class ResponseCache:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self._skip_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and time.monotonic() >= self._skip_until

    def _failed(self, what: str, exc: Exception) -> None:
        self._skip_until = time.monotonic() + _BACKOFF_SECONDS
        log.warning("cache %s failed, serving uncached for %.0fs: %r", what, _BACKOFF_SECONDS, exc)

    async def get(self, key: str) -> bytes | None:
        """The cached body, or None; counted as a hit or a miss."""
        body = await self.lookup(key) if self.enabled else None
        if body is None:
            CACHE_MISSES.inc()
            return None
        CACHE_HITS.inc()
        return body

    async def lookup(self, key: str) -> bytes | None:
        """The cached body, or None (absent, or Redis failed); not counted: the caller counts
        the hit it serves (``fastpath``) or goes on to ``get``, which counts."""
        try:
            value = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            return None
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def set(self, key: str, body: bytes) -> None:
        if not self.enabled:
            return
        try:
            await self.redis.set(key, body, ex=self.ttl)
        except (RedisError, OSError) as exc:
            self._failed("write", exc)
