"""What the API refuses before any route runs, what it never tells a client, and the security
headers of every answer (``api/hardening.py``, ``api/app.py`` error handlers)."""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

import asyncpg
import pytest

from molam_workloads.api.hardening import CONTENT_SECURITY_POLICY, MAX_AUTHORIZATION_BYTES
from molam_workloads.core.metrics import AUTH_DENIALS

from .conftest import SECRET, Api, api_settings, auth, make_token, running_api
from .seed import insert_rule

RULE = {
    "metric": "failure_rate",
    "comparison": "gt",
    "threshold": 0.2,
    "windowMinutes": 15,
    "scope": {"merchantId": "M-1"},
    "notify": {"webhooks": [{"url": "https://hooks.example/T01/B02/s3cr3t?sig=abc"}]},
}


def _denials() -> float:
    return sum(AUTH_DENIALS.labels(s)._value.get() for s in ("401", "403"))


@pytest.mark.parametrize("size", [MAX_AUTHORIZATION_BYTES + 1, 1 << 20])
async def test_an_oversized_authorization_header_is_refused_before_jwt(
    module_api: Api, size: int
) -> None:
    before = _denials()
    header = "Bearer " + "a" * (size - len("Bearer "))
    r = await module_api.client.get("/v1/kpis", headers={"Authorization": header})
    assert r.status_code == 431, r.text
    assert r.json()["error"]["code"] == "header_too_large"
    assert str(MAX_AUTHORIZATION_BYTES) in r.json()["error"]["message"]
    # authenticate() never ran: it logs and counts every refusal it makes.
    assert _denials() == before
    # A token right at the limit still goes through to the JWT check (and is refused there).
    at_limit = "Bearer " + "a" * (MAX_AUTHORIZATION_BYTES - len("Bearer "))
    r = await module_api.client.get("/v1/kpis", headers={"Authorization": at_limit})
    assert r.status_code == 401 and _denials() == before + 1


@pytest.mark.parametrize(
    "url",
    [
        "/v1/kpis?merchant_id=M-1%00x",
        "/v1/alerts?state=firing&merchant_id=%00",
        "/v1/merchants/M-1%00/live",
        "/v1/alert-rules/a%00b",
        "/v1/breakdowns/channel?channel=web%00",
    ],
)
async def test_nul_in_a_parameter_is_a_422(module_api: Api, url: str) -> None:
    r = await module_api.client.get(url, headers=auth("admin"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "NUL" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "nul-rule", "spec": {"metric": "tx_count", "comparison": "gt", '
        b'"threshold": 1, "windowMinutes": 5, "scope": {"channel": "web\\u0000"}}}',
        b'{"name": "nul-rule", "spec": {"metric": "tx_count", "comparison": "gt", '
        b'"threshold": 1, "windowMinutes": 5, "scope": {"channel": "web\x00"}}}',
    ],
    ids=["json-escape", "raw-byte"],
)
async def test_nul_in_a_body_is_a_422_and_stores_nothing(
    api: Api, db: asyncpg.Connection, body: bytes
) -> None:
    r = await api.client.post(
        "/v1/alert-rules",
        content=body,
        headers={**auth("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert await db.fetchval("SELECT count(*) FROM analytics_alert_rules") == 0
    # An escaped backslash before "u0000" is the text \u0000, not a NUL: accepted.
    text = body.replace(b"\\u0000", b"\\\\u0000").replace(b"\x00", b"")
    r = await api.client.post(
        "/v1/alert-rules",
        content=text,
        headers={**auth("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text


async def test_an_oversized_body_is_a_413(module_api: Api) -> None:
    r = await module_api.client.post(
        "/v1/alert-rules",
        content=b"{" + b" " * (1 << 20) + b"}",
        headers={**auth("admin"), "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def _add_failing_routes(api: Api) -> None:
    """Routes that meet real PostgreSQL errors (the API's own routes validate too well to)."""

    async def division(q: str = "") -> Any:
        async with api.app.state.resources.pool.acquire() as conn:
            return await conn.fetchval("SELECT 1 / (length($1) - length($1))", q)

    async def missing_table() -> Any:
        async with api.app.state.resources.pool.acquire() as conn:
            return await conn.fetchval("SELECT secret_column FROM no_such_secret_table")

    async def unreachable() -> Any:
        raise ConnectionRefusedError("connect to redis://:hunter2@192.0.2.9:6379/0 refused")

    api.app.add_api_route("/test/division", division)
    api.app.add_api_route("/test/missing-table", missing_table)
    api.app.add_api_route("/test/unreachable", unreachable)


@pytest.mark.parametrize(
    ("path", "status", "db_words"),
    [
        ("/test/division?q=x", 422, "division by zero"),
        ("/test/missing-table", 500, "no_such_secret_table"),
        ("/test/unreachable?token=eyJsecret", 503, "hunter2"),
    ],
)
async def test_database_error_text_never_reaches_the_client(
    api: Api, caplog: pytest.LogCaptureFixture, path: str, status: int, db_words: str
) -> None:
    _add_failing_routes(api)
    with caplog.at_level(logging.WARNING, logger="molam_workloads.api"):
        r = await api.client.get(path)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert db_words not in r.text
    rid = error["details"]["request_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid) and rid in error["message"]
    assert r.headers["x-request-id"] == rid
    # The log has the request id; what it says of the cause is there, with no secret.
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged
    text = "\n".join(
        rec.getMessage() + (str(rec.exc_info[1]) if rec.exc_info else "") for rec in logged
    )
    if status == 503:
        assert "hunter2" not in text and "eyJsecret" not in text and "192.0.2.9:6379" in text
    else:
        assert db_words in text


async def test_a_merchant_never_sees_where_a_rule_notifies(
    api: Api, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    r = await api.client.put("/v1/alert-rules/own-rule", json=RULE, headers=auth("ops"))
    assert r.status_code == 200, r.text
    await insert_rule(db, "other-rule", "M-2")
    for role in ("admin", "ops", "analyst"):
        staff = (await api.get("/v1/alert-rules/own-rule", role)).json()
        hooks = staff["spec"]["notify"]["webhooks"]
        assert [h["url"] for h in hooks] == [RULE["notify"]["webhooks"][0]["url"]], role
    mine = await api.get("/v1/alert-rules/own-rule", "merchant", "M-1")
    listed = await api.get("/v1/alert-rules", "merchant", "M-1")
    assert mine.status_code == 200 and listed.status_code == 200
    assert [i["name"] for i in listed.json()["items"]] == ["own-rule"]
    for doc in (mine.json(), listed.json()["items"][0]):
        assert "notify" not in doc["spec"]
        assert doc["spec"]["scope"] == {"merchantId": "M-1"}
    assert "s3cr3t" not in mine.text + listed.text and "hooks.example" not in mine.text


@pytest.mark.parametrize(
    "path", ["/", "/dashboard", "/docs", "/health", "/v1/kpis", "/static/dashboard.js", "/nope"]
)
async def test_security_headers_on_every_answer(module_api: Api, path: str) -> None:
    r = await module_api.client.get(path, headers=auth("analyst"))
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


async def test_security_headers_on_answers_from_the_fast_path(module_api: Api) -> None:
    """A cached answer served by ``fastpath.CachedAnswers`` (no FastAPI) carries them too, and
    an oversized header is refused before the fast path's token lookup."""
    url = "/v1/kpis?from=2025-01-01&to=2025-01-02"
    headers = auth("analyst", sub="fast-path")
    sources = []
    for _ in range(3):
        r = await module_api.client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        sources.append(r.headers.get("x-cache"))
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff"
    assert sources[-1] == "hit", sources
    big = {"Authorization": headers["Authorization"] + " " * MAX_AUTHORIZATION_BYTES}
    assert (await module_api.client.get(url, headers=big)).status_code == 431


@pytest.mark.parametrize("page", ["index.html", "docs.html"])
def test_pages_have_no_inline_script_or_style(page: str) -> None:
    """What the policy would block: <script> without src, <style>, style= and on*= attributes,
    javascript: URLs. (The browser tests in test_dashboard.py load both pages under it.)"""
    html = (resources.files("molam_workloads.api") / "static" / page).read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"<style\b", html, flags=re.I)
    assert not re.search(r"\s(style|on[a-z]+)\s*=", html, flags=re.I)
    assert "javascript:" not in html.lower()


async def test_dashboard_link_token_is_not_in_a_query(module_api: Api) -> None:
    """The page tells users to put the token in the fragment, never in the query."""
    page = (await module_api.client.get("/")).text
    assert "#token=" in page and "?token=" not in page
    script = (await module_api.client.get("/static/dashboard.js")).text
    assert "location.hash" in script


async def test_a_token_signed_elsewhere_reads_nothing_through_health(module_api: Api) -> None:
    forged = make_token("admin", secret="y" * 40)
    r = await module_api.client.get("/health", headers={"Authorization": f"Bearer {forged}"})
    assert all(set(c) == {"status"} for c in r.json()["checks"].values())


async def test_the_resources_repr_shows_no_secret(module_db: str, module_redis_url: str) -> None:
    """What logging the process's resources would print: no key, password or URL secret."""
    password = "kafka-hunter2-password"
    settings = api_settings(
        module_db,
        module_redis_url.replace("redis://", "redis://:redis-hunter2@", 1),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="analytics",
        kafka_sasl_password=password,
        analytics_jwt_previous_secrets="previous-hunter2-key-0123456789abcdef",
    )
    async with running_api(settings) as api:
        shown = repr(api.app.state.resources)
    assert "Resources(" in shown
    for secret in (password, "redis-hunter2", "previous-hunter2", SECRET):
        assert secret not in shown, secret


async def test_a_path_cannot_forge_a_log_line(
    module_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Control characters of a decoded path (a terminal escape, a vertical tab, NEL) are
    written as \\xNN in the log line. (Python's URL parsing already drops \\n \\r \\t.)"""
    with caplog.at_level(logging.WARNING, logger="molam_workloads.api"):
        r = await module_api.client.get(
            "/v1/merchants/M-2%1b[31m%0bINFO%c2%85forged/live", headers=auth("merchant", "M-1")
        )
    assert r.status_code == 403
    denied = [m for m in caplog.messages if m.startswith("denied GET /v1/merchants/")]
    assert denied and not any(c in m for m in denied for c in "\x1b\x0b\x85\n")
    assert any("M-2\\x1b[31m\\x0bINFO\\x85forged" in m for m in denied)
