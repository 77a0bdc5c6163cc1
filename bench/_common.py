"""Shared plumbing of the benchmarks: a throw-away database and topics, a results table.

Benchmarks are scripts, not tests: ``make bench`` runs them with the local stack's environment
(``.stack/env``). Each creates what it measures on and drops it afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse, urlunparse

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from molam_workloads.core.db import migrate


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run with the local stack's environment (make bench)")
    return value


def cpu_seconds(*commands: str) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the local processes named ``commands``.

    Read from /proc, so it sees only services on this machine: a remote PostgreSQL or broker
    reads as 0. Processes that ended meanwhile drop out of the sum (services keep theirs).
    """
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(commands, 0.0)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name in out:
            fields = stat[stat.rindex(")") + 2 :].split()
            out[name] += (int(fields[11]) + int(fields[12])) / tick
    return out


def with_database(dsn: str, name: str) -> str:
    return urlunparse(urlparse(dsn)._replace(path="/" + name))


@asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A freshly migrated database, dropped on exit; yields its DSN."""
    admin = env("DATABASE_URL")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(admin, name)
    try:
        await migrate(dsn)
        yield dsn
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@asynccontextmanager
async def scratch_topics(bootstrap: str, *specs: tuple[str, int]) -> AsyncIterator[list[str]]:
    """Topics named ``<prefix>.<random>`` with the given partition counts, deleted on exit."""
    names = [f"{prefix}.{uuid.uuid4().hex[:8]}" for prefix, _ in specs]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, p, 1) for n, (_, p) in zip(names, specs, strict=True)]
        )
        yield names
    finally:
        try:
            await admin.delete_topics(names)
        except Exception as exc:  # a broker without DeleteTopics keeps them; say so, go on
            print(f"(could not delete topics {names}: {exc!r})", file=sys.stderr)
        await admin.close()


def table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A plain-text table; the first ``left`` columns are labels (left-aligned)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < left else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
