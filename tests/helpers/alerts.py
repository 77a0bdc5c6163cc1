"""``molam-analytics alerts`` run as a process by the fault tests: started with the test's
environment, stopped with SIGTERM, and its log checked for a clean stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

CLI = str(Path(sys.executable).with_name("molam-analytics"))


@asynccontextmanager
async def alerts_process(
    env: dict[str, str], log_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The evaluator, its output in ``log_path``; on a clean exit of the block it must stop on
    SIGTERM with code 0 and no traceback (a failing block is not masked by these checks)."""
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(CLI, "alerts", env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    log = await asyncio.to_thread(log_path.read_text)
    assert code == 0, log
    assert "Traceback" not in log, log


async def alerts_health(port: int) -> dict[str, Any]:
    """The evaluator's ``/health``, which answers 200 even while it waits for a service."""
    async with httpx.AsyncClient(timeout=2) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/health")
    assert answer.status_code == 200  # an outage is no reason to restart the evaluator
    return dict(answer.json())
