"""What the operator keeps between handler calls: one object in Kopf's ``memo``, never globals.

Created by the startup handler, closed by the cleanup handler: the API client, the discovered
CronJob API version, database pools (one per DSN, created on first use), and per-pipeline
runtime state (a lock serialising that pipeline's reconciles, the scaler's memory, the "kick"
that wakes its daemon when a child changes).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import asyncpg
import kopf

from molam_operator.kube import Kube, KubeError, path
from molam_operator.lagprobe import LagProber
from molam_operator.scaling import ScalerMemory
from molam_operator.settings import OperatorSettings
from molam_workloads.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)
MEMO_KEY = "molam"
# A Secret's value is re-read at most this often (a rotated DATABASE_URL is picked up then).
SECRET_TTL_SECONDS = 30.0
T = TypeVar("T")


class SecretNotAllowed(KubeError):
    """A Secret outside OPERATOR_SECRET_ALLOW: never read, refused as the API server refuses a
    forbidden get (403), so every caller's handling of an unreadable Secret applies."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            403, "NotAllowed", f"secret {namespace}/{name} is outside OPERATOR_SECRET_ALLOW"
        )


@dataclass
class _Cached:
    at: float
    value: Any


@dataclass
class PipelineRuntime:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # ends the daemon's nap
    recheck: bool = False  # a child changed: re-check the children
    rollouts_changed: bool = False  # a child Deployment's availability changed: re-judge Ready
    children_ok: bool = False  # the last reconcile brought every child in shape
    poll_now: bool = True  # the scaling settings changed: poll now
    scaler: ScalerMemory = field(default_factory=ScalerMemory)
    conditions: list[dict[str, Any]] | None = None
    last_status: dict[str, Any] = field(default_factory=dict)
    last_scale_time: str | None = None
    last_scale_reason: str | None = None
    last_resync: float = 0.0  # when the last reconcile of the children ended
    last_started: float = 0.0  # ... and when it started
    observed_generation: int | None = None


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    cron_job_api_version: str
    prober: LagProber = field(default_factory=LagProber)
    pipelines: dict[tuple[str, str], PipelineRuntime] = field(default_factory=dict)
    _pools: dict[str, asyncpg.Pool] = field(default_factory=dict)
    _pool_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _generations: dict[str, int | None] = field(default_factory=dict)
    _rollouts: dict[str, tuple[bool, str]] = field(default_factory=dict)  # uid -> last seen
    _cache: dict[Hashable, _Cached] = field(default_factory=dict)
    _cache_locks: dict[Hashable, asyncio.Lock] = field(default_factory=dict)

    async def cached(self, key: Hashable, ttl: float, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``'s value, shared by every caller for ``ttl`` seconds (one load at a time).

        1,000 AlertRules in a namespace then read its Secret, or their states, once per period
        instead of once each.
        """
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.at < ttl:
            return cast(T, hit.value)
        lock = self._cache_locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit.at < ttl:
                return cast(T, hit.value)
            value = await load()
            self._cache[key] = _Cached(time.monotonic(), value)
            return value

    def uncache(self, key: Hashable) -> None:
        self._cache.pop(key, None)

    def runtime(self, namespace: str, name: str) -> PipelineRuntime:
        key = (namespace, name)
        if key not in self.pipelines:
            self.pipelines[key] = PipelineRuntime()
        return self.pipelines[key]

    def forget(self, namespace: str, name: str) -> None:
        self.pipelines.pop((namespace, name), None)

    def kick(self, namespace: str, name: str) -> None:
        """Wake the pipeline's daemon to re-check its children (a child changed)."""
        rt = self.pipelines.get((namespace, name))
        if rt is not None:
            rt.recheck = True
            rt.wakeup.set()

    def poll_now(self, namespace: str, name: str) -> None:
        """Wake the pipeline's daemon to poll the lag and scale now (its spec changed)."""
        rt = self.runtime(namespace, name)
        rt.poll_now = True
        rt.wakeup.set()

    def rollouts_changed(self, namespace: str, name: str) -> None:
        """Wake the pipeline's daemon to judge its Ready condition again (pods came or went)."""
        rt = self.pipelines.get((namespace, name))
        if rt is not None:
            rt.rollouts_changed = True
            rt.wakeup.set()

    def child_event(
        self,
        event: str | None,
        *,
        uid: str,
        generation: int | None,
        namespace: str,
        pipeline: str,
        rollout: tuple[bool, str] | None = None,
    ) -> bool:
        """A watch event of a child: kick its pipeline if it was deleted or its desired state
        changed. Status-only updates (the controllers' bookkeeping, which leaves
        ``metadata.generation`` alone) do not, so a cold start is not flooded with re-checks;
        but a Deployment's ``rollout`` (``rollout.signature``) that changed re-judges Ready.
        """
        if event == "DELETED":
            self._generations.pop(uid, None)
            self._rollouts.pop(uid, None)
            self.kick(namespace, pipeline)
            return True
        if rollout is not None:
            before = self._rollouts.get(uid)
            self._rollouts[uid] = rollout
            # The initial listing (event None) is judged by the daemon's first reconcile.
            if event is not None and before != rollout:
                self.rollouts_changed(namespace, pipeline)
        seen = self._generations.get(uid)
        self._generations[uid] = generation
        if event == "MODIFIED" and (generation is None or seen is None or generation != seen):
            self.kick(namespace, pipeline)
            return True
        return False

    async def pool(self, dsn: str) -> asyncpg.Pool:
        """A small pool per database, created on first use and kept until cleanup."""
        pool = self._pools.get(dsn)
        if pool is not None:
            return pool
        async with self._pool_lock:
            if dsn not in self._pools:
                try:
                    self._pools[dsn] = await asyncpg.create_pool(
                        dsn, min_size=0, max_size=4, timeout=5, command_timeout=10
                    )
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    raise ServiceUnavailable(f"PostgreSQL is unreachable: {exc}") from None
            return self._pools[dsn]

    async def drop_pool(self, dsn: str) -> None:
        pool = self._pools.pop(dsn, None)
        if pool is not None:
            pool.terminate()

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """A Secret's value (None if the Secret or the key is missing); cached briefly.

        Raises SecretNotAllowed for a Secret outside OPERATOR_SECRET_ALLOW, before any request.
        """
        if not self.settings.allow.secret_allowed(name):
            raise SecretNotAllowed(namespace, name)

        async def load() -> str | None:
            try:
                secret = await self.kube.get(path("v1", "Secret", namespace, name))
            except KubeError as exc:
                log.warning("cannot read secret %s/%s: %s", namespace, name, exc)
                raise
            if secret is None:
                return None
            raw = (secret.get("data") or {}).get(key)
            return base64.b64decode(raw).decode() if raw is not None else None

        value = await self.cached(("secret", namespace, name, key), SECRET_TTL_SECONDS, load)
        if value is None:  # not there yet: look again next time rather than in 30 s
            self.uncache(("secret", namespace, name, key))
        return value

    async def close(self) -> None:
        for pool in self._pools.values():
            try:
                await asyncio.wait_for(pool.close(), 5)
            except TimeoutError:
                pool.terminate()
        self._pools.clear()
        await self.prober.close()
        await self.kube.close()


def get_context(memo: kopf.Memo) -> OperatorContext:
    ctx = memo.get(MEMO_KEY)
    if not isinstance(ctx, OperatorContext):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return ctx
