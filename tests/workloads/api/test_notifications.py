"""``GET /v1/alerts/{id}/notifications`` (the delivery ledger, RBAC as the alert) and
``POST /v1/alert-rules/{name}/test`` answered by a running alerts notifier; receivers on
loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.settings import AlertsSettings

from .conftest import Api, auth
from .seed import insert_alert


@contextlib.asynccontextmanager
async def _receiver(bodies: list[bytes]) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        bodies.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook?token=s3cr3t"
    finally:
        server.close()
        await server.wait_closed()


async def test_rule_test_sends_through_every_destination_and_answers_outcomes(
    api: Api, database_url: str
) -> None:
    bodies: list[bytes] = []
    async with _receiver(bodies) as url:
        spec = {
            "metric": "tx_count",
            "comparison": "lt",
            "threshold": 1,
            "windowMinutes": 5,
            "notify": {"webhooks": [{"url": url, "secret": "0123456789abcdef-own"}]},
        }
        r = await api.client.post(
            "/v1/alert-rules", json={"name": "quiet", "spec": spec}, headers=auth("ops")
        )
        assert r.status_code == 201, r.text
        assert "secret" not in r.text and "0123456789abcdef-own" not in r.text  # write-only
        settings = AlertsSettings(
            database_url=database_url,
            alert_webhook_allow="127.0.0.1",
            alerts_notify_poll_seconds=0.05,
        )
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        notifier = Notifier(pool, settings)
        task = asyncio.create_task(notifier.run())
        try:
            r = await api.client.post("/v1/alert-rules/quiet/test", headers=auth("ops"))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pool.close()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rule"] == "quiet" and body["test_id"] >= 1
    [outcome] = body["results"]
    assert outcome["kind"] == "webhook" and outcome["ok"] and outcome["status_code"] == 204
    assert outcome["destination"].startswith("127.0.0.1:") and "token" not in r.text
    assert len(bodies) == 1 and b'"test":"true"' in bodies[0]


async def test_rule_test_refusals(api: Api) -> None:
    assert (
        await api.client.post("/v1/alert-rules/nope/test", headers=auth("ops"))
    ).status_code == 404
    for role in ("analyst", "merchant"):
        r = await api.client.post(
            "/v1/alert-rules/nope/test", headers=auth(role, "M-1" if role == "merchant" else None)
        )
        assert r.status_code == 403


@pytest.fixture
async def ledger(db: asyncpg.Connection) -> tuple[int, int]:
    """An alert of merchant M-1 with two attempts, and a platform-wide one with none."""
    own = await insert_alert(db, "m1-rule", "M-1")
    platform = await insert_alert(db, "all", None)
    await db.execute(
        """
        INSERT INTO analytics_alert_deliveries (alert_id, rule_name, kind, status, destination,
            attempt, status_code, latency_ms, ok, error)
        VALUES ($1, 'm1-rule', 'webhook', 'firing', 'hooks.example', 1, 503, 12.5, false,
                'HTTP 503'),
               ($1, 'm1-rule', 'webhook', 'firing', 'hooks.example', 2, 200, 8.0, true, NULL)
        """,
        own,
    )
    return own, platform


async def test_alert_notifications_list_every_attempt_for_whoever_reads_the_alert(
    api: Api, ledger: tuple[int, int]
) -> None:
    own, platform = ledger
    for role, merchant in (("analyst", None), ("merchant", "M-1")):
        r = await api.get(f"/v1/alerts/{own}/notifications", role, merchant)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == 2
        assert [(i["attempt"], i["ok"], i["status_code"], i["error"]) for i in body["items"]] == [
            (1, False, 503, "HTTP 503"),
            (2, True, 200, None),
        ]
        assert body["items"][0]["destination"] == "hooks.example"
    page = (await api.get(f"/v1/alerts/{own}/notifications?limit=1&offset=1")).json()
    assert [i["attempt"] for i in page["items"]] == [2] and page["total"] == 2
    assert (await api.get(f"/v1/alerts/{platform}/notifications")).json()["items"] == []
    # Another merchant's alert, or the platform's, is as missing as a wrong id.
    for alert_id in (own, platform):
        r = await api.get(f"/v1/alerts/{alert_id}/notifications", "merchant", "M-2")
        assert r.status_code == 404
    assert (await api.get("/v1/alerts/999999/notifications")).status_code == 404
    assert (await api.client.get(f"/v1/alerts/{own}/notifications")).status_code == 401
