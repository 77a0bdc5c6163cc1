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
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import kopf

from molam_operator.kube import Kube, KubeError, path
from molam_operator.scaling import ScalerMemory
from molam_operator.settings import OperatorSettings
from molam_workloads.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)
MEMO_KEY = "molam"


@dataclass
class PipelineRuntime:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    poll_now: bool = True
    scaler: ScalerMemory = field(default_factory=ScalerMemory)
    conditions: list[dict[str, Any]] | None = None
    last_status: dict[str, Any] = field(default_factory=dict)
    last_scale_time: str | None = None
    last_scale_reason: str | None = None
    last_resync: float = 0.0
    observed_generation: int | None = None


@dataclass
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    cron_job_api_version: str
    pipelines: dict[tuple[str, str], PipelineRuntime] = field(default_factory=dict)
    _pools: dict[str, asyncpg.Pool] = field(default_factory=dict)
    _pool_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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
            rt.kick.set()

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
        """A Secret's value (None if the Secret or the key is missing)."""
        try:
            secret = await self.kube.get(path("v1", "Secret", namespace, name))
        except KubeError as exc:
            log.warning("cannot read secret %s/%s: %s", namespace, name, exc)
            return None
        if secret is None:
            return None
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key])
        raw = (secret.get("data") or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None

    async def close(self) -> None:
        for pool in self._pools.values():
            try:
                await asyncio.wait_for(pool.close(), 5)
            except TimeoutError:
                pool.terminate()
        self._pools.clear()
        await self.kube.close()


def get_context(memo: kopf.Memo) -> OperatorContext:
    ctx = memo.get(MEMO_KEY)
    if not isinstance(ctx, OperatorContext):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return ctx
