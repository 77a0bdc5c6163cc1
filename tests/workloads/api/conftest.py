"""Fixtures of the API tests: the app with its real lifespan (PostgreSQL, Redis), tokens."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from helpers.browser import Browser, chromium
from helpers.database import own_redis_url, scratch_database
from redis.asyncio import Redis

from molam_workloads.api.app import create_app
from molam_workloads.api.settings import ApiSettings

SECRET = "test-secret-0123456789abcdef-0123456789"


def make_token(
    role: str | None = "admin",
    merchant_id: str | None = None,
    *,
    sub: str = "tester",
    exp_in: float | None = 300,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **extra: Any,
) -> str:
    claims: dict[str, Any] = {"sub": sub, **extra}
    if role is not None:
        claims["role"] = role
    if merchant_id is not None:
        claims["merchant_id"] = merchant_id
    if exp_in is not None:
        claims["exp"] = int(time.time() + exp_in)
    return jwt.encode(claims, secret, algorithm=algorithm)


def auth(role: str = "admin", merchant_id: str | None = None, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(role, merchant_id, **kw)}"}


@dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI
    settings: ApiSettings

    async def get(
        self, path: str, role: str = "admin", merchant_id: str | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.client.get(path, headers=auth(role, merchant_id), **kw)


def api_settings(dsn: str, redis_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "redis_url": redis_url,
        "kafka_bootstrap_servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        "analytics_jwt_secret": SECRET,
        "cache_ttl_seconds": 30,
        "reporting_currency": "USD",
        "db_pool_max": 5,
    }
    values.update(overrides)
    return ApiSettings(**values)


@asynccontextmanager
async def running_api(settings: ApiSettings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client=client, app=app, settings=settings)


@pytest.fixture
async def api(database_url: str, redis_url: str) -> AsyncIterator[Api]:
    async with running_api(api_settings(database_url, redis_url)) as a:
        yield a


@pytest.fixture(scope="module")
async def module_db(admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A migrated database shared by the tests of one module (they only read, or write
    rows of their own)."""
    async with scratch_database(admin_dsn, "molam_m", template_db) as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def module_redis_url(redis_base_url: str) -> str:
    url = own_redis_url(redis_base_url)
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture(scope="module")
async def module_api(module_db: str, module_redis_url: str) -> AsyncIterator[Api]:
    """One app for a module whose tests do not depend on each other's writes."""
    async with running_api(api_settings(module_db, module_redis_url)) as a:
        yield a


@pytest.fixture
def live_server(database_url: str, redis_url: str) -> Iterator[str]:
    """The app served by uvicorn on a free port from a thread (its own event loop)."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(api_settings(database_url, redis_url))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b
