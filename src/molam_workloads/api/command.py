"""``molam-analytics api [--port 8082]``: serve the API with uvicorn inside the running loop."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn

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
        http="httptools",
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
