"""The FastAPI application: lifespan-owned resources, routers, errors, metrics.

``create_app(settings)`` builds it; the lifespan opens the one asyncpg pool and the Redis client
of the process and closes them on shutdown. Redis is optional at run time: the cache degrades
to uncached answers and the live counters to PostgreSQL when it is down.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from molam_workloads.api.auth import TokenPolicy
from molam_workloads.api.cache import ResponseCache
from molam_workloads.api.deps import Resources, get_resources
from molam_workloads.api.errors import ApiError, error_body
from molam_workloads.api.fastpath import CachedAnswers
from molam_workloads.api.hardening import RequestGuard, SecurityHeaders, loggable
from molam_workloads.api.middleware import MetricsMiddleware
from molam_workloads.api.queries.rollup import RollupRefresher
from molam_workloads.api.routers import (
    alert_rules,
    alerts,
    anomalies,
    breakdowns,
    dashboard,
    health,
    kpis,
    live,
    me,
    metrics,
    notifications,
    timeseries,
    top_merchants,
)
from molam_workloads.api.settings import ApiSettings
from molam_workloads.core.db import create_pool
from molam_workloads.core.kafka import client_options
from molam_workloads.core.redact import redact_urls_in

log = logging.getLogger(__name__)
STATEMENT_TIMEOUT_MS = 15_000

# Session settings of the API's connections. Its aggregate queries are short and many:
# - jit off: compiling (PostgreSQL's default above a plan cost they reach) costs more than
#   running them;
# - no parallel workers: under concurrent requests they compete for the same cores;
# - work_mem 32MB: a 90-day top-merchants aggregation hashes ~50k groups without spilling;
# - no merge joins: the planner cannot see that the day rates (a few hundred rows, already
#   ordered by currency) are best hashed, and sorts a 90-day range to merge them instead;
# - statement_timeout: one runaway query cannot hold a connection (answered 503);
# - generic plans: a ranged query's text repeats with new parameters, and planning it afresh
#   each time was half of a KPI query's cost.
# The figures behind these: docs/decisions/014-api-session-settings.md.
SESSION_SETTINGS = {
    "jit": "off",
    "max_parallel_workers_per_gather": "0",
    "work_mem": "32MB",
    "enable_mergejoin": "off",
    "plan_cache_mode": "force_generic_plan",
    "statement_timeout": str(STATEMENT_TIMEOUT_MS),
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    431: "header_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.state.settings
    # No reset round trip when a request returns its connection: the API leaves no session
    # state (its locks are transaction-scoped; it sets, listens and declares nothing outside a
    # transaction), which tests/workloads/api/test_sessions.py checks.
    async with create_pool(
        settings,
        min_size=min(4, settings.db_pool_max),
        server_settings=SESSION_SETTINGS,
        reset_sessions=False,
    ) as pool:
        redis = Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        refresher = RollupRefresher(pool)
        try:
            app.state.resources = Resources(
                settings=settings,
                pool=pool,
                redis=redis,
                cache=ResponseCache(redis, settings.cache_ttl_seconds),
                rollup=refresher,
                kafka=client_options(settings),
                token_policy=TokenPolicy.from_settings(settings),
            )
            yield
        finally:
            await refresher.close()
            await redis.aclose()


def _json(status: int, code: str, message: str, details: Any = None, **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, **kw)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status_code, exc.code, exc.message, exc.details, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI: a body that is not JSON; invalid input is a 422
            return _json(422, "invalid_request", str(exc.detail))
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = _allowed_methods(request, exc) if exc.status_code == 405 else exc.headers
        return _json(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": str(e.get("type"))}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _json(422, "invalid_request", f"{where}: {first['msg']}", details)

    # The database's own words (table, column, constraint names, values) stay in the logs: the
    # client gets a generic message and the request id that finds them there.
    @app.exception_handler(asyncpg.DataError)
    async def bad_value(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        rid = _request_id()
        log.warning(
            "%s %s: value refused by PostgreSQL (request %s): %r",
            request.method,
            loggable(request.url.path),
            rid,
            exc,
        )
        return _json(
            422,
            "invalid_request",
            f"a parameter value is out of range or malformed (request {rid})",
            {"request_id": rid},
            headers={"X-Request-Id": rid},
        )

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id()
        where = f"{request.method} {loggable(request.url.path)}"
        # PostgreSQL away: one line per interval with a count, not one per request; the line
        # names the request that opened the wait (or the interval), the others only answer it.
        if not get_resources(request).database_unavailable(exc, f"{where}, request {rid}"):
            log.warning(
                "%s: a dependency is unavailable (request %s): %s",
                where,
                rid,
                redact_urls_in(repr(exc)),
            )
        return _json(
            503,
            "unavailable",
            f"a backing service is unavailable; retry shortly (request {rid})",
            {"request_id": rid},
            headers={"X-Request-Id": rid},
        )

    for exc_type in (
        OSError,
        TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.QueryCanceledError,  # statement_timeout
    ):
        app.add_exception_handler(exc_type, unavailable)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id()
        log.exception("%s %s failed (request %s)", request.method, loggable(request.url.path), rid)
        return _json(
            500,
            "internal",
            f"internal error (request {rid})",
            {"request_id": rid},
            headers={"X-Request-Id": rid},
        )


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _allowed_methods(request: Request, exc: StarletteHTTPException) -> Mapping[str, str] | None:
    """The ``Allow`` header of a 405: every method the OpenAPI schema documents for the path.
    Starlette names only those of the first route that matched the path, and FastAPI makes one
    route per method, so ``DELETE /v1/alert-rules`` was told ``Allow: GET``, not POST."""
    app = request.app
    index: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allow_index", None)
    if index is None:  # built once, from the schema the clients read
        index = [
            (
                re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))),
                {m.upper() for m in ops if m in _HTTP_METHODS},
            )
            for path, ops in app.openapi()["paths"].items()
        ]
        app.state.allow_index = index
    methods: set[str] = set()
    for pattern, documented in index:
        if pattern.fullmatch(request.url.path):
            methods |= documented
    if not methods:  # a path outside the schema (dashboard, static files): Starlette's answer
        return exc.headers
    return {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}


def _request_id() -> str:
    """Names one failed request in the logs and in its answer."""
    return uuid.uuid4().hex[:16]


def _openapi(app: FastAPI) -> Any:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        }
        for path, ops in schema["paths"].items():
            if path.startswith("/v1/"):
                for op in ops.values():
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    return build


def create_app(settings: ApiSettings) -> FastAPI:
    app = FastAPI(
        title="Molam Analytics API",
        version="1.0.0",
        description=(
            "Real-time payments analytics. `/v1` needs a bearer JWT (HS256) with the claims "
            "`sub`, `role` (admin, ops, analyst, merchant), `merchant_id` and `exp`. A merchant "
            "token reads its own merchant only: it is scoped to it when it names no merchant, "
            "and refused (403) when it names another. Amounts are decimal strings in the "
            "reporting currency. No parameter or body may contain NUL (U+0000): 422. A rule "
            "across parameters that no schema can state (e.g. `from` before `to`) is stated "
            "in their descriptions, and its 422 says `details.rule`."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by routers.dashboard from the vendored Swagger UI
        redoc_url=None,
    )
    app.state.settings = settings
    _install_error_handlers(app)
    app.add_middleware(CachedAnswers, api=app)  # inside MetricsMiddleware: hits are measured
    app.add_middleware(RequestGuard)  # before the token cache and any JWT work; measured too
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(SecurityHeaders)  # on every answer, refusals included
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    for module in (
        health,
        metrics,
        me,
        kpis,
        timeseries,
        breakdowns,
        top_merchants,
        live,
        alert_rules,
        alerts,
        notifications,
        anomalies,
        dashboard,
    ):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(packages=[("molam_workloads.api", "static")]), name="static")
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
