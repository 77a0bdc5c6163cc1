"""PostgreSQL access: the one pool per process, and versioned, concurrency-safe migrations."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

from molam_workloads.core.errors import ServiceUnavailable
from molam_workloads.core.redact import redact_url
from molam_workloads.core.settings import DatabaseSettings

log = logging.getLogger(__name__)

# Months of txn_hourly_agg partitions kept ready around "now" at every migrate.
PARTITIONS_BEHIND_MONTHS = 24
PARTITIONS_AHEAD_MONTHS = 3
_MIGRATION_LOCK = "molam.migrate"
# Advisory locks between live ingestion and backfill, one per UTC day: a stream batch holds
# ``pg_advisory_xact_lock_shared(hashtext(INGEST_LOCK), day.toordinal())`` for each day it
# touches (in ascending order), backfill the exclusive one for the day it rebuilds. So a day is
# never rebuilt while a stream batch is half-way through it, and other days go on meanwhile.
INGEST_LOCK = "molam.ingest"
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


async def connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ServiceUnavailable(f"PostgreSQL at {redact_url(dsn)} is unreachable: {exc}") from None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool's ``reset`` that sends nothing (asyncpg has already rolled back an open
    transaction by then)."""


@asynccontextmanager
async def create_pool(
    settings: DatabaseSettings,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    server_settings: dict[str, str] | None = None,
    reset_sessions: bool = True,
) -> AsyncIterator[asyncpg.Pool]:
    """The process's pool, opened for the lifetime of the ``async with`` and always closed.

    ``server_settings`` are session parameters of every connection (e.g. ``{"jit": "off"}``).
    ``reset_sessions``: a released connection is reset (``RESET ALL``, advisory locks and
    ``LISTEN`` dropped, cursors closed: asyncpg's default, one more round trip per use); False
    for a process that never leaves session state behind, whose connections then only have an
    open transaction rolled back.
    """
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=min_size,
            max_size=max_size or settings.db_pool_max,
            timeout=10,
            command_timeout=60,
            server_settings=server_settings,
            reset=None if reset_sessions else _keep_session,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ServiceUnavailable(
            f"PostgreSQL at {redact_url(settings.database_url)} is unreachable: {exc}"
        ) from None
    try:
        yield pool
    finally:
        await pool.close()


async def delete_in_chunks(pool: asyncpg.Pool, sql: str, cutoff: object, chunk: int) -> int:
    """Run the ``DELETE`` ``sql`` ($1 ``cutoff``, $2 ``chunk``: it deletes at most that many
    rows) until it deletes fewer; returns how many in all. Each statement is its own short
    transaction, so no lock on a large table is held for long."""
    total = 0
    while True:
        status: str = await pool.execute(sql, cutoff, chunk)
        deleted = int(status.rsplit(" ", 1)[-1])
        total += deleted
        if deleted < chunk:
            return total


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in the package, in order."""
    found = []
    for entry in resources.files("molam_workloads.core.migrations").iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


async def migrate(dsn: str) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call.

    Several pods may run this at once: a session-level advisory lock lets one apply while the
    others wait, then find nothing left to do.
    """
    conn = await connect(dsn)
    applied: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info("applied migration %03d_%s", version, name)
                applied.append(version)
            await conn.execute(
                "SELECT ensure_txn_hourly_partitions("
                f" now() - interval '{PARTITIONS_BEHIND_MONTHS} months',"
                f" now() + interval '{PARTITIONS_AHEAD_MONTHS} months')"
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
