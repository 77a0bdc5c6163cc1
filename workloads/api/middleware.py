"""Request metrics: ``analytics_api_requests_total{method,route,status}`` and the latency
histogram, labelled by route template (``/v1/alerts/{alert_id}``), never by raw path."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from molam_workloads.core.metrics import API_LATENCY, API_REQUESTS

UNMATCHED = "<unmatched>"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            API_REQUESTS.labels(method, route, str(status)).inc()
            API_LATENCY.labels(method, route).observe(time.perf_counter() - start)
