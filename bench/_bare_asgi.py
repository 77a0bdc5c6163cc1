"""The ceiling of ``bench/api.py``: a bare ASGI app that answers every request with one constant
small JSON body, served by uvicorn exactly as ``molam-analytics api`` serves the API (same
``uvicorn.Config``, uvloop, httptools; ``molam_workloads.api.command``), with no routing,
authentication, cache or metrics.

Usage: ``python bench/_bare_asgi.py PORT`` (started by ``bench/api.py``; listens on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn

from molam_workloads.api.command import loop_factory, server_config

BODY = b'{"status":"ok","source":"bare-asgi"}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> int:
    server = uvicorn.Server(server_config(app, "127.0.0.1", int(sys.argv[1])))
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(server.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
