"""The role x endpoint x merchant matrix: every cross-merchant attempt is a 403, and a merchant
token that names no merchant is scoped to its own data (never another's, never everyone's)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from .conftest import Api, api_settings, auth, running_api
from .seed import hourly, insert_alert, insert_anomaly, insert_hourly, insert_rule

OWN, OTHER = "M-1", "M-2"
ROLES = ("admin", "ops", "analyst", "merchant")
RANGE = "from=2025-07-01&to=2025-07-03"
T = datetime(2025, 7, 1, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
async def world(module_db: str, module_redis_url: str) -> AsyncIterator[dict[str, Any]]:
    conn = await asyncpg.connect(module_db)
    ids: dict[str, Any] = {}
    try:
        await insert_hourly(
            conn,
            [
                hourly(
                    T,
                    OWN,
                    tx_count=5,
                    succeeded_count=5,
                    payment_count=5,
                    payment_volume_local=5000,
                ),
                hourly(
                    T,
                    OTHER,
                    country="CI",
                    channel="card",
                    tx_count=7,
                    succeeded_count=7,
                    payment_count=7,
                    payment_volume_local=7000,
                ),
                hourly(T, None, channel="wallet", tx_count=2, succeeded_count=2),
            ],
        )
        for owner in (OWN, OTHER, None):
            tag = owner or "platform"
            await insert_rule(conn, f"rule-{tag.lower()}", owner)
            ids[f"alert:{tag}"] = await insert_alert(conn, f"rule-{tag.lower()}", owner)
            await insert_anomaly(conn, f"anomaly-{tag}", owner, T)
    finally:
        await conn.close()
    async with running_api(api_settings(module_db, module_redis_url)) as api:
        yield {"api": api, "dsn": module_db, **ids}


def merchants_seen(path: str, body: dict[str, Any]) -> set[str | None]:
    """Every merchant whose data the answer shows (None: all merchants / the platform)."""
    if path.startswith("/v1/live"):
        return {body["merchant_id"]}
    if path.startswith("/v1/alert-rules"):
        return {i["spec"].get("scope", {}).get("merchantId") for i in body["items"]}
    if path.startswith("/v1/alerts"):
        return {i["scope"].get("merchantId") for i in body["items"]}
    if path.startswith("/v1/anomalies"):
        return {i["merchant_id"] for i in body["items"]}
    seen = {body["filters"]["merchant_id"]}
    if path.startswith("/v1/breakdowns/merchant"):
        seen |= {r["key"] for r in body["rows"]}
    return seen


READS = (
    f"/v1/kpis?{RANGE}",
    f"/v1/timeseries?{RANGE}&granularity=day",
    f"/v1/timeseries?{RANGE}&granularity=hour",
    f"/v1/breakdowns/merchant?{RANGE}",
    f"/v1/breakdowns/country?{RANGE}",
    f"/v1/breakdowns/channel?{RANGE}",
    f"/v1/breakdowns/currency?{RANGE}",
    "/v1/live?x=1",
    "/v1/alert-rules?x=1",
    "/v1/alerts?x=1",
    "/v1/anomalies?x=1",
)


@pytest.mark.parametrize("target", [None, OWN, OTHER], ids=["no-merchant", "own", "other"])
@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("role", ROLES)
async def test_read_matrix(world: dict[str, Any], role: str, path: str, target: str | None) -> None:
    api: Api = world["api"]
    url = path + (f"&merchant_id={target}" if target else "")
    r = await api.client.get(url, headers=auth(role, OWN if role == "merchant" else None))
    if role == "merchant" and target == OTHER:
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert OTHER not in r.text.replace(f"merchant_id={OTHER}", "")
        return
    assert r.status_code == 200, r.text
    seen = merchants_seen(path, r.json())
    if role == "merchant":
        assert seen == {OWN}, f"{url} showed {seen} to merchant {OWN}"
    elif target:
        assert seen <= {target}, seen


@pytest.mark.parametrize("target", [None, OWN, OTHER], ids=["no-merchant", "own", "other"])
@pytest.mark.parametrize("role", ROLES)
async def test_top_merchants_is_for_staff(
    world: dict[str, Any], role: str, target: str | None
) -> None:
    api: Api = world["api"]
    url = f"/v1/top-merchants?{RANGE}" + (f"&merchant_id={target}" if target else "")
    r = await api.client.get(url, headers=auth(role, OWN if role == "merchant" else None))
    if role == "merchant":
        assert r.status_code == 403, r.text
        assert OTHER not in r.text
    else:
        assert r.status_code == 200, r.text
        assert [m["merchant_id"] for m in r.json()["merchants"]] == [OTHER, OWN]


@pytest.mark.parametrize("target", [OWN, OTHER])
@pytest.mark.parametrize("role", ROLES)
async def test_merchant_path(world: dict[str, Any], role: str, target: str) -> None:
    api: Api = world["api"]
    r = await api.client.get(
        f"/v1/merchants/{target}/live", headers=auth(role, OWN if role == "merchant" else None)
    )
    if role == "merchant" and target == OTHER:
        assert r.status_code == 403, r.text
    else:
        assert r.status_code == 200, r.text
        assert r.json()["merchant_id"] == target


@pytest.mark.parametrize("owner", [OWN, OTHER, None], ids=["own", "other", "platform"])
@pytest.mark.parametrize("role", ROLES)
async def test_single_rule_and_alert(world: dict[str, Any], role: str, owner: str | None) -> None:
    """Another merchant's (or the platform's) rule or alert answers a merchant token exactly as
    one that does not exist: 404, the same body, so guessing names or ids finds nothing."""
    api: Api = world["api"]
    headers = auth(role, OWN if role == "merchant" else None)
    tag = owner or "platform"
    allowed = role != "merchant" or owner == OWN
    missing = {
        f"/v1/alert-rules/rule-{tag.lower()}": "/v1/alert-rules/no-such-rule",
        f"/v1/alerts/{world[f'alert:{tag}']}": "/v1/alerts/999999999",
    }
    for url, absent in missing.items():
        r = await api.client.get(url, headers=headers)
        if allowed:
            assert r.status_code == 200, (url, r.text)
            continue
        assert r.status_code == 404, (url, r.text)
        unknown = await api.client.get(absent, headers=headers)
        assert unknown.status_code == 404
        name = url.rsplit("/", 1)[1]
        assert r.json() == json.loads(unknown.text.replace(absent.rsplit("/", 1)[1], name))


def _rule_body(name: str) -> dict[str, Any]:
    spec = {"metric": "tx_count", "comparison": "lt", "threshold": 1, "windowMinutes": 60}
    return {"name": name, "spec": spec}


@pytest.mark.parametrize("role", ROLES)
async def test_writes(world: dict[str, Any], role: str) -> None:
    """Managing rules and alerts: admin and ops only."""
    api: Api = world["api"]
    headers = auth(role, OWN if role == "merchant" else None)
    allowed = role in ("admin", "ops")
    name = f"w-{role}-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(world["dsn"])
    try:
        await insert_rule(conn, f"{name}-x", OWN)  # an existing rule to change and delete
        ack_id = await insert_alert(conn, f"{name}-x", OWN)
    finally:
        await conn.close()
    spec = _rule_body(name)["spec"]
    results = [
        await api.client.post("/v1/alert-rules", json=_rule_body(name), headers=headers),
        await api.client.put(f"/v1/alert-rules/{name}-x", json=spec, headers=headers),
        await api.client.post(f"/v1/alerts/{ack_id}/acknowledge", headers=headers),
        await api.client.post(f"/v1/alerts/{ack_id}/resolve", headers=headers),
        await api.client.delete(f"/v1/alert-rules/{name}-x", headers=headers),
    ]
    codes = [r.status_code for r in results]
    assert codes == ([201, 200, 200, 200, 204] if allowed else [403] * 5), [r.text for r in results]


async def test_repeated_merchant_params_are_all_checked(world: dict[str, Any]) -> None:
    api: Api = world["api"]
    r = await api.client.get(
        f"/v1/kpis?{RANGE}&merchant_id={OWN}&merchant_id={OTHER}", headers=auth("merchant", OWN)
    )
    assert r.status_code == 403


async def test_merchant_kpis_are_its_own(world: dict[str, Any]) -> None:
    api: Api = world["api"]
    mine = (await api.get(f"/v1/kpis?{RANGE}", "merchant", OWN)).json()
    assert mine["filters"]["merchant_id"] == OWN
    assert mine["kpis"]["tx_count"] == 5
    everyone = (await api.get(f"/v1/kpis?{RANGE}", "analyst")).json()
    assert everyone["kpis"]["tx_count"] == 14
