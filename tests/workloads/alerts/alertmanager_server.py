"""A real Alertmanager (Debian's prometheus-alertmanager 0.25, installed by
stack/system-deps.sh) on a free loopback port, with a temporary config and storage, no
clustering, and amtool pointed at it."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.services import free_port

CONFIG = """
global:
  resolve_timeout: {resolve_timeout}
route:
  receiver: blackhole
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: blackhole
"""


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{names[0]} not found: run stack/system-deps.sh (Debian prometheus-alertmanager)")


@dataclass
class Alertmanager:
    url: str
    process: asyncio.subprocess.Process

    async def alerts(self, **params: str) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(trust_env=False) as c:
            resp = await c.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        resp.raise_for_status()
        body: list[dict[str, Any]] = resp.json()
        return body

    async def post(self, alerts: list[dict[str, Any]]) -> None:
        async with httpx.AsyncClient(trust_env=False) as c:
            resp = await c.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        resp.raise_for_status()

    async def amtool(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            _binary("amtool"),
            *args,
            f"--alertmanager.url={self.url}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 0, err.decode()
        return out.decode()


@asynccontextmanager
async def alertmanager(tmp: Path, resolve_timeout: str = "5s") -> AsyncIterator[Alertmanager]:
    """Start one; wait until /-/ready answers (bounded); always stop it."""
    binary = _binary("prometheus-alertmanager", "alertmanager")
    config = tmp / "alertmanager.yml"
    config.write_text(CONFIG.format(resolve_timeout=resolve_timeout))
    storage = tmp / "am-data"
    storage.mkdir(exist_ok=True)
    port = free_port()
    with (tmp / "alertmanager.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip: one standalone instance
            "--log.level=warn",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    am = Alertmanager(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(trust_env=False) as c:
            while True:
                if proc.returncode is not None:
                    log = (tmp / "alertmanager.log").read_text()
                    pytest.fail(f"alertmanager exited {proc.returncode}: {log[-2000:]}")
                try:
                    if (await c.get(f"{am.url}/-/ready", timeout=1)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("alertmanager not ready within 20 s")
                await asyncio.sleep(0.1)
        yield am
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), timeout=10)
