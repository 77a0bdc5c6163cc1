"""Redis cache of summary answers (``analytics:*`` keys, TTL ``CACHE_TTL_SECONDS``).

A key is ``analytics:<endpoint>:<role>:<merchant>:<digest of the normalised parameters>``, the
parameters including the merchant filter the permissions resolved, so one role or merchant is
never served another's answer. Redis is an optimisation: when it fails, answers are computed
uncached (and Redis is left alone for a few seconds instead of timing out on every request);
the wait is reported by ``outage`` (one log line per interval, ``analytics_waiting_for``), which
the live counters' reader shares.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.responses import Response

from molam_workloads.core.cache import CACHE_PREFIX
from molam_workloads.core.faults import Outage
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


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else None if value is None else bytes(value)


class ResponseCache:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self._skip_until = 0.0
        self._batch: list[tuple[str, asyncio.Future[bytes | None]]] | None = None
        self._reads: set[asyncio.Future[None]] = set()
        self.outage = Outage("api", "redis", log)  # /health's check of Redis reports here too

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and time.monotonic() >= self._skip_until

    def _failed(self, what: str, exc: Exception) -> None:
        self._skip_until = time.monotonic() + _BACKOFF_SECONDS
        self.outage.failed(exc, f"cache {what}; answering uncached, Redis tried every 5 s")

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
        the hit it serves (``fastpath``) or goes on to ``get``, which counts.

        The lookups of one turn of the event loop are read from Redis together, one ``MGET``
        (each key's value as a ``GET`` of it then would return it): a round trip costs far more
        than a further key (docs/decisions/015-cached-answers.md)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if self._batch is None:
            self._batch = []
            loop.call_soon(self._read_batch)
        self._batch.append((key, future))
        return await future

    def _read_batch(self) -> None:
        batch, self._batch = self._batch or [], None
        task = asyncio.ensure_future(self._mget(batch))
        self._reads.add(task)  # held until done (the loop keeps weak references only)
        task.add_done_callback(self._reads.discard)

    async def _mget(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self.redis.mget([key for key, _ in batch])
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            values = [None] * len(batch)
        except BaseException as exc:
            for _, future in batch:  # each caller gets what its own GET would have raised
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:  # cancelled (shutdown): so are the callers
                    future.cancel()
            if isinstance(exc, Exception):
                return
            raise
        else:
            self.outage.recovered()
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(_bytes(value))

    async def set(self, key: str, body: bytes) -> None:
        if not self.enabled:
            return
        try:
            await self.redis.set(key, body, ex=self.ttl)
        except (RedisError, OSError) as exc:
            self._failed("write", exc)
