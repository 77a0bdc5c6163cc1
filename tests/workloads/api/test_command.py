"""``molam-analytics api`` as a process: configuration errors in one line, then serving."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys

import httpx

from .conftest import SECRET
from .test_cache import closed_port

CLI = shutil.which("molam-analytics", path=os.path.dirname(sys.executable)) or "molam-analytics"


async def test_bad_configuration_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANALYTICS_JWT_SECRET"}
    env["ANALYTICS_JWT_SECRET"] = "short"
    proc = await asyncio.create_subprocess_exec(
        CLI, "api", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "ANALYTICS_JWT_SECRET" in lines[0], lines


async def test_serves_until_terminated(database_url: str, redis_url: str) -> None:
    port = closed_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ANALYTICS_JWT_SECRET": SECRET,
    }
    proc = await asyncio.create_subprocess_exec(
        CLI, "api", "--port", str(port), "--host", "127.0.0.1", env=env
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(150):
                try:
                    r = await client.get("/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the API did not start")
            assert r.status_code == 200, r.text
            assert (await client.get("/")).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal for its parent to see
        assert await asyncio.wait_for(proc.wait(), 15) in (0, -signal.SIGTERM)
