"""``molam-analytics api [--port 8082]``: serve the API with uvicorn inside the running loop."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from molam_workloads.api.app import create_app
from molam_workloads.api.settings import ApiSettings
from molam_workloads.core.db import connect
from molam_workloads.core.heap import freeze_startup_heap
from molam_workloads.core.settings import load_settings


def loop_factory() -> asyncio.AbstractEventLoop:
    """The CLI runs the API on uvloop (faster I/O and callbacks than asyncio's own loop)."""
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: API_PORT, 8082)"
    )
    parser.add_argument("--host", default=None, help="address to bind (default: API_HOST)")


class _OneWritePerStep:
    """A connection's transport whose writes within one event-loop step leave as one.

    uvicorn writes a response's head and its body separately: two system calls and two TCP
    segments where one does (docs/decisions/030-api-request-overhead.md). The writes are
    joined and sent at the loop's next step, in order; closing sends what is pending first.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # the rest is the transport's own
        return getattr(self._transport, name)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through ``_OneWritePerStep``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined = _OneWritePerStep(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, joined))


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for the API (``bench/api.py`` serves its bare baseline app with the
    same ones)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the CLI configured logging
        access_log=False,  # /metrics counts requests; logs keep denials and errors
        proxy_headers=True,
        http=_HttpProtocol,
        ws="none",  # no WebSocket routes (an upgrade would hand over the joined transport)
    )


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(ApiSettings)
    # uvicorn turns a failing lifespan into a traceback and exit 3: find an unreachable
    # PostgreSQL here instead, so it is the CLI's one-line error (Redis and Kafka being down
    # only degrade the API, which /health reports).
    await (await connect(settings.database_url)).close()
    config = server_config(
        create_app(settings), args.host or settings.api_host, args.port or settings.api_port
    )
    server = uvicorn.Server(config)
    freeze_startup_heap()  # the app, its routes and models live as long as the process
    await server.serve()
    return 0
