"""FastAPI dependencies: the process's resources and the caller, as ``Annotated`` aliases.

The lifespan (``app.py``) opens the pool, the Redis client and the cache once and keeps them in
a ``Resources`` on ``app.state``; handlers receive them through these aliases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from redis.asyncio import Redis

from molam_workloads.api.auth import Principal, TokenCache, TokenPolicy, authenticate
from molam_workloads.api.cache import ResponseCache
from molam_workloads.api.queries.prefix import StateCache
from molam_workloads.api.queries.rollup import RollupRefresher
from molam_workloads.api.settings import ApiSettings
from molam_workloads.core.faults import POSTGRES_DOWN, Outage

log = logging.getLogger("molam_workloads.api")


@dataclass
class Resources:
    settings: ApiSettings
    pool: asyncpg.Pool
    redis: Redis
    cache: ResponseCache
    rollup: RollupRefresher
    # core.kafka.client_options of the settings, resolved once (the TLS context loads its files);
    # out of repr, which would show the SASL password.
    kafka: dict[str, Any] = field(repr=False)
    token_policy: TokenPolicy
    tokens: TokenCache = field(default_factory=TokenCache)  # verified under token_policy
    states: StateCache = field(default_factory=StateCache)  # of the running totals
    # The API's waits for PostgreSQL and Kafka (Redis: ``cache.outage``), which /health and
    # the 503 answers report: one log line per interval, ``analytics_waiting_for``.
    postgres_outage: Outage = field(default_factory=lambda: Outage("api", "postgresql", log))
    kafka_outage: Outage = field(default_factory=lambda: Outage("api", "kafka", log))

    def database_unavailable(self, exc: BaseException, where: str) -> bool:
        """Report a request that failed because PostgreSQL is away (one line per interval,
        and a probe that ends the wait once it answers); False: not that kind of error."""
        if not isinstance(exc, POSTGRES_DOWN):
            return False
        self.postgres_outage.failed(exc, where)
        self.postgres_outage.probe_until_back(
            lambda: self.pool.fetchval("SELECT 1", timeout=2), gone=self.pool.is_closing
        )
        return True

    def outage(self, service: str) -> Outage:
        """The wait for ``service`` (``postgresql``, ``redis`` or ``kafka``)."""
        if service == "redis":
            return self.cache.outage
        return self.kafka_outage if service == "kafka" else self.postgres_outage


def get_resources(request: Request) -> Resources:
    """Not a dependency itself (dependencies are ``async def``: FastAPI would run plain
    functions in a thread pool, a handoff that costs more than these functions)."""
    resources: Resources = request.app.state.resources
    return resources


async def resources(request: Request) -> Resources:
    """All of the process's resources in one dependency: FastAPI walks each dependency of a
    route on every request (~7.5 µs apiece here), so a route that needs several takes this one
    (docs/decisions/030-api-request-overhead.md)."""
    return get_resources(request)


async def get_settings(request: Request) -> ApiSettings:
    return get_resources(request).settings


async def get_pool(request: Request) -> asyncpg.Pool:
    return get_resources(request).pool


async def get_redis(request: Request) -> Redis:
    return get_resources(request).redis


async def get_cache(request: Request) -> ResponseCache:
    return get_resources(request).cache


async def get_kafka_options(request: Request) -> dict[str, Any]:
    return get_resources(request).kafka


async def get_principal(request: Request) -> Principal:
    resources = get_resources(request)
    principal = authenticate(request, resources.token_policy, resources.tokens)
    request.state.principal = principal
    return principal


ResourcesDep = Annotated[Resources, Depends(resources)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
RedisDep = Annotated[Redis, Depends(get_redis)]
CacheDep = Annotated[ResponseCache, Depends(get_cache)]
KafkaOptionsDep = Annotated[dict[str, Any], Depends(get_kafka_options)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
