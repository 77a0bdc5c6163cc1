"""Request metrics: ``analytics_api_requests_total{method,route,status}`` and the latency
histogram, labelled by route template (``/v1/alerts/{alert_id}``), never by raw path."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from molam_workloads.core.metrics import API_LATENCY, API_REQUESTS

UNMATCHED = "<unmatched>"


class StatusSend:
    """An ASGI ``send`` that remembers the status of the response it passes on."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send, status: int) -> None:
        self.send = send
        self.status = status  # until the response starts: what an exception would give

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent = StatusSend(send, 500)
        try:
            await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            requests, latency = _series(scope["method"], route, sent.status)
            requests.inc()
            latency.observe(time.perf_counter() - start)


# The labelled series, looked up once rather than by ``labels()`` on every request
# (docs/decisions/016-metric-series.md). As many entries as the registry has series (nothing
# here removes series from these metrics).
_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = API_REQUESTS.labels(method, route, str(status)), API_LATENCY.labels(method, route)
        _SERIES[key] = series
    return series
