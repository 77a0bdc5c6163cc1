"""An alert rule's status in the API: what the evaluator last decided, NoData included."""

from __future__ import annotations

import asyncpg

from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.rules import AlertRuleSpec, save_rule

from .conftest import Api, auth

RATE = {"metric": "failure_rate", "comparison": "gt", "threshold": 0.2, "windowMinutes": 5}


async def test_nodata_shows_in_the_api(api: Api, db: asyncpg.Connection, database_url: str) -> None:
    """A rate of nothing (no transaction at all): NoData, and why, in the rule's status."""
    spec = AlertRuleSpec.model_validate(RATE)
    await save_rule(db, name="api-nodata", source="api", spec=spec)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        report = await run_cycle(pool, AlertsSettings(database_url=database_url), stale=False)
    finally:
        await pool.close()
    assert report.no_data == 1 and report.fired == []
    for role in ("analyst", "admin"):
        r = await api.client.get("/v1/alert-rules/api-nodata", headers=auth(role))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["spec"]["noDataState"] == "nodata"
        assert body["status"]["state"] == "NoData"
        assert body["status"]["no_data_reason"] == "no_denominator"
        assert body["status"]["last_value"] is None
    listed = (await api.client.get("/v1/alert-rules", headers=auth("ops"))).json()
    assert [i["status"]["state"] for i in listed["items"]] == ["NoData"]


async def test_no_data_state_is_a_choice_of_three(api: Api) -> None:
    h = auth("admin")
    for choice in ("ok", "nodata", "alerting"):
        r = await api.client.put(
            "/v1/alert-rules/choice", json={**RATE, "noDataState": choice}, headers=h
        )
        assert r.status_code == 200 and r.json()["spec"]["noDataState"] == choice, r.text
        assert r.json()["status"]["state"] == "Inactive"  # not evaluated yet
    r = await api.client.put(
        "/v1/alert-rules/choice", json={**RATE, "noDataState": "sometimes"}, headers=h
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"][-1] == "noDataState"
    schema = (await api.client.get("/openapi.json")).json()["components"]["schemas"]
    assert schema["NoDataState"]["enum"] == ["ok", "nodata", "alerting"]
