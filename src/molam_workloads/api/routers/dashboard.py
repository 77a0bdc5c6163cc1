"""The dashboard page at ``/`` and ``/dashboard``, and the API docs at ``/docs``; their
browser files are served from the package under ``/static`` (no CDN, no inline script: the
Content-Security-Policy of ``hardening.SecurityHeaders`` runs only files served from here)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"], include_in_schema=False)


def _page(name: str) -> str:
    return (resources.files("molam_workloads.api") / "static" / name).read_text()


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_page("index.html"), headers={"Cache-Control": "no-cache"})


@router.get("/docs", response_class=HTMLResponse)
async def docs() -> HTMLResponse:
    """Swagger UI for /openapi.json, from the vendored files (``static/docs.js`` starts it)."""
    return HTMLResponse(_page("docs.html"), headers={"Cache-Control": "no-cache"})
