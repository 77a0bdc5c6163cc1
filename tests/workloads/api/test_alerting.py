"""Alert rules CRUD (the CR spec document), alerts acknowledge/resolve, anomalies, live."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from helpers.samples import ALERT_RULE, sample_spec
from redis.asyncio import Redis

from molam_workloads.core.cache import live_key
from molam_workloads.core.rules import rule_status

from .conftest import Api, auth
from .seed import hourly, insert_alert, insert_anomaly, insert_hourly, insert_rule

SPEC = sample_spec(ALERT_RULE)


async def test_rule_crud(api: Api, db: asyncpg.Connection) -> None:
    h = auth("ops")
    r = await api.client.post("/v1/alert-rules", json={"name": "sn-fail", "spec": SPEC}, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["spec"]["windowMinutes"] == 15 and body["spec"]["for"] == "5m"
    assert body["source"] == "api" and body["status"]["state"] == "Inactive"
    row = await db.fetchrow("SELECT * FROM analytics_alert_rules WHERE name = 'sn-fail'")
    assert row["is_active"] and row["window_minutes"] == 15 and row["scope_country"] == "SN"

    again = await api.client.post(
        "/v1/alert-rules", json={"name": "sn-fail", "spec": SPEC}, headers=h
    )
    assert again.status_code == 409

    changed = {**SPEC, "threshold": 0.3, "enabled": False}
    r = await api.client.put("/v1/alert-rules/sn-fail", json=changed, headers=h)
    assert r.status_code == 200 and r.json()["spec"]["threshold"] == "0.3"
    assert r.json()["id"] == body["id"]
    assert not await db.fetchval("SELECT is_active FROM analytics_alert_rules WHERE name='sn-fail'")

    listed = (await api.get("/v1/alert-rules", "analyst")).json()
    assert [i["name"] for i in listed["items"]] == ["sn-fail"] and listed["total"] == 1

    assert (await api.client.delete("/v1/alert-rules/sn-fail", headers=h)).status_code == 204
    assert (await api.client.delete("/v1/alert-rules/sn-fail", headers=h)).status_code == 404
    assert (await api.get("/v1/alert-rules/sn-fail")).status_code == 404


async def test_rule_validation(api: Api) -> None:
    h = auth("admin")
    bad = [
        {"name": "x", "spec": {**SPEC, "metric": "nope"}},
        {"name": "x", "spec": {**SPEC, "windowMinutes": 0}},
        {"name": "x", "spec": {**SPEC, "for": "5 minutes"}},
        {"name": "x", "spec": {**SPEC, "unknown": 1}},
        {"name": "Not A Name", "spec": SPEC},
        {"spec": SPEC},
    ]
    for body in bad:
        r = await api.client.post("/v1/alert-rules", json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_request"


async def test_crd_rules_are_read_only(api: Api, db: asyncpg.Connection) -> None:
    await insert_rule(db, "from-cr", None, source="crd")
    h = auth("admin")
    r = await api.client.put("/v1/alert-rules/from-cr", json=SPEC, headers=h)
    assert r.status_code == 409
    assert "custom resource" in r.json()["error"]["message"]
    r = await api.client.delete("/v1/alert-rules/from-cr", headers=h)
    assert r.status_code == 409
    r = await api.client.post("/v1/alert-rules", json={"name": "from-cr", "spec": SPEC}, headers=h)
    assert r.status_code == 409
    assert (await api.get("/v1/alert-rules/from-cr")).json()["source"] == "crd"
    status = await rule_status(db, "from-cr")
    assert status is not None


async def test_acknowledge_and_resolve(api: Api, db: asyncpg.Connection) -> None:
    await insert_rule(db, "r1", "M-1")
    alert_id = await insert_alert(db, "r1", "M-1", severity="critical")
    h = auth("ops", sub="alice")
    r = await api.client.post(
        f"/v1/alerts/{alert_id}/acknowledge", json={"comment": "looking"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"] == "alice"
    again = await api.client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=h)
    assert again.status_code == 409
    r = await api.client.post(f"/v1/alerts/{alert_id}/resolve", headers=auth("admin", sub="bob"))
    assert r.status_code == 200 and r.json()["resolved_by"] == "bob"
    assert (await api.client.post(f"/v1/alerts/{alert_id}/resolve", headers=h)).status_code == 409
    assert (await api.client.post("/v1/alerts/999999/resolve", headers=h)).status_code == 404
    events = await db.fetch(
        "SELECT event, actor, detail->>'comment' AS comment FROM analytics_alert_events "
        "WHERE alert_id = $1 ORDER BY id",
        alert_id,
    )
    assert [(e["event"], e["actor"], e["comment"]) for e in events] == [
        ("acknowledged", "alice", "looking"),
        ("resolved", "bob", None),
    ]


async def test_alert_list_filters_and_pages(api: Api, db: asyncpg.Connection) -> None:
    await insert_rule(db, "r1", None)
    ids = [await insert_alert(db, "r1", None, state="resolved") for _ in range(4)]
    ids.append(await insert_alert(db, "r1", None, severity="critical"))
    page = (await api.get("/v1/alerts?limit=2&offset=1")).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    firing = (await api.get("/v1/alerts?state=firing")).json()
    assert [a["id"] for a in firing["items"]] == [ids[-1]]
    crit = (await api.get("/v1/alerts?severity=critical")).json()
    assert crit["total"] == 1
    assert (await api.get("/v1/alerts?state=bogus")).status_code == 422
    assert (await api.get("/v1/alerts?limit=0")).status_code == 422


async def test_anomalies(api: Api, db: asyncpg.Connection) -> None:
    t = datetime(2025, 7, 1, 10, tzinfo=UTC)
    for i in range(3):
        await insert_anomaly(db, f"a{i}", "M-1", t + timedelta(hours=i))
    await insert_anomaly(db, "b", "M-2", t)
    await insert_anomaly(db, "p", None, t)
    assert (await api.get("/v1/anomalies")).json()["total"] == 5
    mine = (await api.get("/v1/anomalies?limit=2", "merchant", "M-1")).json()
    assert mine["total"] == 3 and len(mine["items"]) == 2
    assert {a["merchant_id"] for a in mine["items"]} == {"M-1"}
    assert (await api.get("/v1/anomalies?merchant_id=M-2")).json()["total"] == 1


async def test_live_reads_redis_then_postgresql(
    api: Api, db: asyncpg.Connection, redis: Redis
) -> None:
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    await insert_hourly(
        db,
        [
            hourly(
                hour,
                "M-1",
                tx_count=3,
                succeeded_count=3,
                gross_volume_local="300",
                payment_count=3,
                payment_volume_local="300",
                fee_local="3",
            ),
            hourly(
                hour,
                "M-2",
                currency="USD",
                tx_count=1,
                succeeded_count=1,
                gross_volume_local="10",
                payment_count=1,
                payment_volume_local="10",
            ),
        ],
    )
    r = (await api.get("/v1/live?merchant_id=M-1")).json()
    assert r["source"] == "postgresql"
    assert r["counters"]["tx_count"] == "3" and r["counters"]["gross_volume:XOF"] == "300.0000"
    assert r["counters"]["gross_volume_reporting"].startswith("0.495")
    platform = (await api.get("/v1/live")).json()
    assert platform["merchant_id"] is None and platform["counters"]["tx_count"] == "4"

    held = {"tx_count": "42", "as_of": "x", "owner": "merchant:M-1"}
    await redis.hset(live_key("M-1", now.date()), mapping=held)
    r = (await api.get("/v1/live", "merchant", "M-1")).json()
    assert r == {
        "merchant_id": "M-1",
        "day": now.date().isoformat(),
        "source": "redis",
        "counters": {"tx_count": "42", "as_of": "x"},
    }
