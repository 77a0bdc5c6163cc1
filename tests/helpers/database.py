"""Databases of the tests' own on the stack's PostgreSQL and Redis: a DSN pointed at another
database, a scratch database (cloned from the migrated template) dropped after use, and the Redis
database number of this run."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse, urlunparse

import asyncpg


def with_database(dsn: str, dbname: str) -> str:
    """``dsn`` pointed at the database ``dbname`` (same server, user and options)."""
    return urlunparse(urlparse(dsn)._replace(path="/" + dbname))


def database_of(dsn: str) -> str:
    return urlparse(dsn).path.lstrip("/")


@asynccontextmanager
async def scratch_database(
    admin_dsn: str, prefix: str, template: str | None = None
) -> AsyncIterator[str]:
    """A new database named ``<prefix>_<random>`` (a copy of ``template`` if given: fast, and
    already migrated); yields its DSN and drops it, connections and all, afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(create)
    finally:
        await conn.close()
    try:
        yield with_database(admin_dsn, name)
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            # A test may have closed it to connections (the database made unreachable).
            await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            await conn.execute(_drop(name))
        finally:
            await conn.close()


def _drop(name: str) -> str:
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop ``name``, connections and all, from a synchronous test (through ``psql``); a
    database that is not there is no error."""
    subprocess.run(["psql", admin_dsn, "-qc", _drop(name)], capture_output=True, check=False)


def own_redis_url(base_url: str) -> str:
    """The Redis database number of this run: TEST_REDIS_DB (default 9), so that parallel runs
    on one machine can use different ones."""
    return urlunparse(urlparse(base_url)._replace(path="/" + os.environ.get("TEST_REDIS_DB", "9")))
