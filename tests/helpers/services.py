"""Services a fault test owns: a PostgreSQL cluster and a Redis server of its own, on free
loopback ports, that the test may stop, restart or flush. The machine's own PostgreSQL and Redis
(the stack's) are never touched.

PostgreSQL: ``initdb`` and ``pg_ctl`` of the machine's binaries (as the ``postgres`` user when
the tests run as root, since PostgreSQL refuses to run as root), trust authentication on
127.0.0.1. Redis: ``redis-server`` without persistence, so a restart loses everything, as a pod
restarted without a volume does.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import asyncpg
from redis.asyncio import Redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(args: Sequence[str], *, user: str | None = None, timeout: float = 60) -> str:
    """Run a command to its end (as ``user`` when given); its output, or an error with it."""
    if user is not None:
        args = ["runuser", "-u", user, "--", *args]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {text[-2000:]}")
    return text


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        if (version / "bin" / name).exists():
            return str(version / "bin" / name)
    raise RuntimeError(f"{name} not found: PostgreSQL's server binaries are needed")


class OwnedPostgres:
    """A PostgreSQL cluster in a temporary directory; ``dsn`` reaches its ``postgres`` database
    while it runs. ``stop()``/``start()``/``restart()`` as a test needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def init(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        await _run(
            [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E",
             "UTF8", "--no-sync"],
            user=self.user,
        )  # fmt: skip

    async def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c max_connections=50"
        )
        await _run(
            [_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
             str(self.root / "log"), "-w", "-t", "60", "start"],
            user=self.user,
        )  # fmt: skip

    async def stop(self, mode: str = "fast") -> None:
        await _run(
            [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
            user=self.user,
        )

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def running(self) -> bool:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True


@asynccontextmanager
async def owned_postgres() -> AsyncIterator[OwnedPostgres]:
    """A started cluster of the test's own, stopped and deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="molam-pg-"))
    pg = OwnedPostgres(root)
    try:
        await pg.init()
        await pg.start()
        yield pg
    finally:
        if (pg.data / "postmaster.pid").exists():
            with suppress(RuntimeError):  # already stopped by the test
                await pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


class OwnedRedis:
    """A ``redis-server`` on a port of its own, without persistence."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 10) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.root),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        client = Redis.from_url(self.url)
        try:
            while True:
                try:
                    await client.ping()  # type: ignore[misc]
                    return
                except Exception:  # not up yet: refused, or loading
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Kill it (SIGKILL: no chance to save anything; it has nothing to save anyway)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def owned_redis() -> AsyncIterator[OwnedRedis]:
    root = Path(tempfile.mkdtemp(prefix="molam-redis-"))
    server = OwnedRedis(root)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def scrape(port: int, name: str, labels: dict[str, str]) -> float | None:
    """The value of one sample on a process's ``/metrics`` at 127.0.0.1:``port`` (None: not
    there, or nothing answered)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with httpx.AsyncClient(timeout=2) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
