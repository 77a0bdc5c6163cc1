"""The OpenAPI schema tells the truth (issue 15, item 7).

Focused tests, one per rule the schema once got wrong, then schemathesis with every check
against the app served by uvicorn on loopback, with a bounded number of examples.

What no JSON Schema can state, a rule across two parameters (``from`` before ``to``, a range of
at most ``API_MAX_RANGE_DAYS`` days, both within 1970-2200), the parameters' descriptions
state, and the 422 names it with ``details.rule = "range"``. Schemathesis cannot read a
description, so its ``positive_data_acceptance`` is run here with one documented exception:
a 422 with ``details.rule = "range"`` for parameters that do break that rule, as this test
computes on its own from the request. Any other refusal of schema-valid data fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.settings import AlertsSettings

from .conftest import Api, auth

SPEC: dict[str, Any] = {
    "metric": "failure_rate",
    "comparison": "gt",
    "threshold": "0.2",
    "windowMinutes": 15,
}
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
MAX_EXAMPLES = 8  # per operation and phase: ~60 s on 2 cores for the whole schema
TIME_BUDGET_S = 150  # the run is bounded by examples; this only stops a runaway one


async def test_threshold_schema_says_what_is_accepted(module_api: Api) -> None:
    schema = (await module_api.client.get("/openapi.json")).json()
    bodies = schema["components"]["schemas"]
    threshold = bodies["AlertRuleSpec"]["properties"]["threshold"]
    strings = [s for s in threshold["anyOf"] if s.get("type") == "string"]
    assert len(strings) == 1 and strings[0]["pattern"] and strings[0]["maxLength"]
    create = schema["paths"]["/v1/alert-rules"]["post"]["requestBody"]["content"]
    replace = schema["paths"]["/v1/alert-rules/{name}"]["put"]["requestBody"]["content"]
    assert create["application/json"]["schema"]["$ref"].endswith("/AlertRuleCreate")
    assert replace["application/json"]["schema"]["$ref"].endswith("/AlertRuleSpec")

    h = auth("admin")
    for text in ("", "1e5", "NaN", " 1", "1_000", "0x10"):
        r = await module_api.client.put(
            "/v1/alert-rules/t-bad", json={**SPEC, "threshold": text}, headers=h
        )
        assert r.status_code == 422, (text, r.text)
        assert r.json()["error"]["details"][0]["loc"] == ["body", "threshold"]
    for text, stored in (("0.8", "0.8"), ("-12", "-12"), (".5", "0.5"), (0.25, "0.25")):
        r = await module_api.client.put(
            "/v1/alert-rules/t-ok", json={**SPEC, "threshold": text}, headers=h
        )
        assert r.status_code == 200, (text, r.text)
        assert r.json()["spec"]["threshold"] == stored
    r = await module_api.client.post(
        "/v1/alert-rules",
        json={"name": "t-create", "spec": {**SPEC, "threshold": ""}},
        headers=h,
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"][-1] == "threshold"


async def test_for_schema_says_what_is_accepted(module_api: Api) -> None:
    schema = (await module_api.client.get("/openapi.json")).json()
    prop = schema["components"]["schemas"]["AlertRuleSpec"]["properties"]["for"]
    [text] = [s for s in prop["anyOf"] if s.get("type") == "string"]
    assert text["pattern"] and text["minLength"] == 1
    h = auth("admin")
    for value in ("", " 5m", "5 minutes", "9999999999h"):
        r = await module_api.client.put(
            "/v1/alert-rules/t-for", json={**SPEC, "for": value}, headers=h
        )
        assert r.status_code == 422, (value, r.text)
    r = await module_api.client.put(
        "/v1/alert-rules/t-for", json={**SPEC, "for": "1h30m"}, headers=h
    )
    assert r.status_code == 200 and r.json()["spec"]["for"] == "1h30m"


async def test_urls_every_parser_reads(module_api: Api) -> None:
    """A URL is echoed in answers and used as a destination: one whose host no URL parser
    reads (``http://[``) is refused, as the schema's pattern says."""
    schema = (await module_api.client.get("/openapi.json")).json()["components"]["schemas"]
    runbook = schema["AlertRuleSpec"]["properties"]["runbookUrl"]
    [text] = [s for s in runbook["anyOf"] if s.get("type") == "string"]
    assert schema["Webhook"]["properties"]["url"]["pattern"] == text["pattern"]
    assert schema["Notify"]["properties"]["alertmanagers"]["items"]["pattern"] == text["pattern"]
    h = auth("admin")
    for url, accepted in (
        ("http://[", False),
        ("http://", False),
        ("http://h.example/a\x04b", False),
        ("https://u:p@h.example:8443/x", True),
    ):
        for body in (
            {**SPEC, "runbookUrl": url},
            {**SPEC, "notify": {"webhooks": [{"url": url}]}},
            {**SPEC, "notify": {"alertmanagers": [url]}},
        ):
            r = await module_api.client.put("/v1/alert-rules/t-url", json=body, headers=h)
            assert r.status_code == (200 if accepted else 422), (body, r.text)


async def test_booleans_are_json_booleans(module_api: Api) -> None:
    h = auth("admin")
    for body in (
        {**SPEC, "enabled": 0},
        {**SPEC, "enabled": "false"},
        {**SPEC, "notify": {"webhooks": [{"url": "https://h.example/", "sendResolved": 1}]}},
    ):
        r = await module_api.client.put("/v1/alert-rules/t-bool", json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
    r = await module_api.client.put(
        "/v1/alert-rules/t-bool", json={**SPEC, "enabled": False}, headers=h
    )
    assert r.status_code == 200 and r.json()["spec"]["enabled"] is False


async def test_an_empty_range_is_refused_and_documented(module_api: Api) -> None:
    schema = (await module_api.client.get("/openapi.json")).json()
    params = {p["name"]: p for p in schema["paths"]["/v1/kpis"]["get"]["parameters"]}
    assert "`from` = `to`, is refused" in params["from"]["description"]
    assert "after `from`" in params["to"]["description"]
    day = "2026-03-01T00:00:00Z"
    r = await module_api.client.get(
        "/v1/kpis", params={"from": day, "to": day}, headers=auth("admin")
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"]["rule"] == "range"
    r = await module_api.client.get(
        "/v1/kpis", params={"from": day, "to": "2026-03-01T01:00:00Z"}, headers=auth("admin")
    )
    assert r.status_code == 200, r.text


async def test_anomalies_take_iso_8601_instants_only(module_api: Api) -> None:
    schema = (await module_api.client.get("/openapi.json")).json()
    params = {p["name"]: p for p in schema["paths"]["/v1/anomalies"]["get"]["parameters"]}
    for name in ("since", "until"):
        variants = params[name]["schema"].get("anyOf", [params[name]["schema"]])
        assert {"type": "string", "format": "date-time"} in variants
        for value in ("0.5", "1700000000", "-1", "tomorrow"):
            r = await module_api.client.get(
                "/v1/anomalies", params={name: value}, headers=auth("admin")
            )
            assert r.status_code == 422, (name, value, r.text)
            assert r.json()["error"]["details"][0]["loc"] == ["query", name]
        r = await module_api.client.get(
            "/v1/anomalies", params={name: "2026-03-01T00:00:00+01:00"}, headers=auth("admin")
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/alert-rules", "GET, POST"),
        ("POST", "/v1/alert-rules/some-rule", "DELETE, GET, PUT"),
        ("PATCH", "/v1/alert-rules/some-rule", "DELETE, GET, PUT"),
        ("GET", "/v1/alert-rules/some-rule/backtest", "POST"),
        ("DELETE", "/v1/kpis", "GET"),
    ],
)
async def test_405_allow_lists_every_method_of_the_path(
    module_api: Api, method: str, path: str, allow: str
) -> None:
    r = await module_api.client.request(method, path, headers=auth("admin"))
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"
    documented = (await module_api.client.get("/openapi.json")).json()["paths"]
    template = path.replace("some-rule", "{name}")
    assert set(allow.split(", ")) == {m.upper() for m in documented[template]}


@contextmanager
def running_notifier(database_url: str) -> Iterator[list[str]]:
    """The alerts notifier, as the alerts process runs it beside the API, so that
    ``POST /v1/alert-rules/{name}/test`` is answered. Its HTTP client answers every destination
    itself (202): the rules schemathesis writes name hosts that must not be looked up."""
    sent: list[str] = []

    def receive(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url.host))
        return httpx.Response(202)

    stop = threading.Event()

    async def main() -> None:
        settings = AlertsSettings(database_url=database_url, alerts_notify_poll_seconds=0.05)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        client = httpx.AsyncClient(transport=httpx.MockTransport(receive))
        task = asyncio.create_task(Notifier(pool, settings, client).run())
        try:
            stopped = asyncio.ensure_future(asyncio.to_thread(stop.wait))
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()
            await pool.close()
        if not stop.is_set():
            errors.append(task.exception() or RuntimeError("the notifier stopped"))

    errors: list[BaseException] = []
    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(10)
    assert not errors, f"the notifier stopped during the run: {errors!r}"


def test_schemathesis_all_checks(live_server: str, database_url: str, tmp_path: Path) -> None:
    """Every check schemathesis has, every phase, bounded examples: it exits 0."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HOOKS),
        "MOLAM_CHECK_LOG": str(tmp_path / "checked.txt"),
        "NO_COLOR": "1",
    }
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{live_server}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",  # run by the hooks' variant, see the module's docstring
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "15",
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        # NUL is refused in every parameter and body (422), as the API's description says:
        # PostgreSQL text cannot hold it.
        "--generation-allow-x00",
        "false",
        "--header",
        f"Authorization: {auth('admin', sub='schemathesis', exp_in=3600)['Authorization']}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        "--no-color",
    ]
    started = time.monotonic()
    with running_notifier(database_url):
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIME_BUDGET_S,
            check=False,
        )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    report = _report(output)
    print(report, f"\nschemathesis took {elapsed:.1f} s; its output: {tmp_path}/schemathesis.txt")
    assert done.returncode == 0, report
    verdicts = (tmp_path / "checked.txt").read_text().split()
    counts = {v: verdicts.count(v) for v in set(verdicts)}
    print("positive_data_acceptance_documented:", counts)
    # It ran on every response, and the documented exception was needed (and held).
    assert counts.get("checked", 0) > 1000 and counts.get("range-rule", 0) > 0, counts


def _report(output: str) -> str:
    """Schemathesis's failures and summary, without the server's logs around them."""
    start = output.find("=== FAILURES ===")
    if start < 0:
        start = output.find("=== SUMMARY ===")
    return output[max(start, 0) :][:20000]
