"""The dashboard page at ``/`` and ``/dashboard``, and the API docs at ``/docs``; their
browser files are served from the package under ``/static`` (no CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"], include_in_schema=False)


def _page() -> str:
    return (resources.files("molam_workloads.api") / "static" / "index.html").read_text()


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@router.get("/docs", response_class=HTMLResponse)
async def docs() -> HTMLResponse:
    """Swagger UI for /openapi.json, from the vendored files (no CDN)."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Molam Analytics API",
        swagger_js_url="/static/vendor/swagger-ui-bundle.js",
        swagger_css_url="/static/vendor/swagger-ui.css",
        swagger_favicon_url="data:,",
    )
