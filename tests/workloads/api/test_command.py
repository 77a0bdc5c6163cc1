"""``molam-analytics api`` as a process: configuration errors in one line, then serving; and
the HTTP server it runs (``server_config``), whose writes of one step leave as one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from typing import Any

import httpx
import uvicorn

from molam_workloads.api.command import _OneWritePerStep, server_config

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


class _Recorded(asyncio.Transport):
    """Stands in for the socket transport below ``_OneWritePerStep``, to see its writes one by
    one (a real socket may split or merge them); the server test after it uses real ones."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_writes_of_one_step_leave_as_one() -> None:
    inner = _Recorded()
    joined = _OneWritePerStep(inner, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    joined.write(b"body")
    assert inner.writes == []  # sent at the loop's next step
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    joined.write(b"next")  # a later step: a write of its own, in order
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next"]
    assert joined.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's

    joined.write(b"last words")
    joined.close()  # what is pending goes out before the close
    assert inner.writes[2:] == [b"last words"] and inner.closed
    joined.write(b"after the close")
    await asyncio.sleep(0)
    assert inner.writes[3:] == []  # dropped, as a closing transport drops it


async def test_the_server_answers_pipelined_requests_whole() -> None:
    """Three requests on one connection, answered by the server the API runs with: a small
    body, one larger than the socket's buffers (the transport pauses the writer), a streamed one
    whose chunks come in separate steps, then ``Connection: close``."""
    big = os.urandom(3 << 20)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/streamed":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for chunk in (b"one,", b"two"):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b""})
            return
        body = big if scope["path"] == "/big" else scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    port = closed_port()
    config = server_config(app, "127.0.0.1", port)
    config.lifespan = "off"
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /streamed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        bodies = [await _read_response(reader) for _ in range(3)]
        assert bodies == [b"/small", big, b"one,two"]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the last
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    if b"content-length" in fields:
        return await asyncio.wait_for(reader.readexactly(int(fields[b"content-length"])), 10)
    assert fields[b"transfer-encoding"] == b"chunked"
    body = b""
    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readexactly(2)
    return body
