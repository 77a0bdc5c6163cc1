"""The dashboard in headless Chromium: it loads without a console error and shows the numbers
the API gives, for a staff token and for a merchant token."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from helpers.browser import Browser

from .conftest import make_token
from .seed import hourly, insert_alert, insert_anomaly, insert_hourly, insert_rule

TILES = """[...document.querySelectorAll('[data-kpi]')]
    .map(t => [t.dataset.kpi, t.dataset.value, t.querySelector('.value').textContent])"""


async def _seed(db: asyncpg.Connection) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = []
    for i, merchant in enumerate(("M-1", "M-2", "M-3")):
        for back in range(0, 40, 3):
            rows.append(
                hourly(
                    hour - timedelta(hours=back),
                    merchant,
                    currency="USD" if i else "XOF",
                    tx_count=10 + i + back,
                    succeeded_count=8 + i,
                    failed_count=2,
                    payment_count=6 + i,
                    payment_volume_local=str(1000 * (i + 1) + back),
                    refund_count=1,
                    refund_volume_local="12.5",
                    fee_local="3.25",
                )
            )
    await insert_hourly(db, rows)
    await insert_rule(db, "high-failure", "M-1")
    await insert_alert(db, "high-failure", "M-1", severity="critical")
    await insert_anomaly(db, "a-1", "M-2", hour)


def _tiles(browser: Browser) -> dict[str, tuple[str, str]]:
    return {k: (v, text) for k, v, text in browser.evaluate(TILES)}


def _check_tiles(tiles: dict[str, tuple[str, str]], kpis: dict[str, Any]) -> None:
    for name in ("gross_volume", "net_volume", "tx_count", "avg_ticket", "refund_volume", "fees"):
        value, text = tiles[name]
        assert value == str(kpis[name]), (name, value, kpis[name])
        assert text and text != "–", (name, text)
    assert float(tiles["success_rate"][0]) == pytest.approx(kpis["success_rate"])


async def test_dashboard_for_staff(
    live_server: str, db: asyncpg.Connection, browser: Browser
) -> None:
    await _seed(db)
    token = make_token("analyst", sub="dash")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=live_server, headers=headers) as client:
        kpis = (await client.get("/v1/kpis")).json()["kpis"]
        top = (await client.get("/v1/top-merchants?limit=10")).json()["merchants"]
        alerts = (await client.get("/v1/alerts?state=firing")).json()["items"]
        anomalies = (await client.get("/v1/anomalies")).json()["items"]

    await asyncio.to_thread(browser.navigate, f"{live_server}/#token={token}")
    await asyncio.to_thread(browser.wait_for, "document.body.dataset.state === 'ready'")
    _check_tiles(await asyncio.to_thread(_tiles, browser), kpis)
    assert kpis["tx_count"] > 0
    rows = await asyncio.to_thread(
        browser.evaluate,
        "[...document.querySelectorAll('#top-merchants tbody tr')]"
        ".map(r => [r.dataset.merchant, r.dataset.volume])",
    )
    assert rows == [[m["merchant_id"], m["gross_volume"]] for m in top]
    shown_alerts = await asyncio.to_thread(
        browser.evaluate, "[...document.querySelectorAll('#alerts li')].map(l => +l.dataset.alert)"
    )
    assert shown_alerts == [a["id"] for a in alerts] and shown_alerts
    shown_anomalies = await asyncio.to_thread(
        browser.evaluate,
        "[...document.querySelectorAll('#anomalies li')].map(l => +l.dataset.anomaly)",
    )
    assert shown_anomalies == [a["id"] for a in anomalies] and shown_anomalies
    # two charts drawn with uPlot, and the token no longer in the address bar
    assert (
        await asyncio.to_thread(browser.evaluate, "document.querySelectorAll('.uplot').length") == 2
    )
    assert await asyncio.to_thread(browser.evaluate, "location.href") == f"{live_server}/"
    login_display = "getComputedStyle(document.querySelector('#login')).display"
    assert await asyncio.to_thread(browser.evaluate, login_display) == "none"
    assert browser.errors == []


async def test_dashboard_for_a_merchant(
    live_server: str, db: asyncpg.Connection, browser: Browser
) -> None:
    await _seed(db)
    token = make_token("merchant", "M-2", sub="shop")
    async with httpx.AsyncClient(
        base_url=live_server, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        kpis = (await client.get("/v1/kpis")).json()["kpis"]
    await asyncio.to_thread(browser.navigate, f"{live_server}/dashboard?range=7d#token={token}")
    await asyncio.to_thread(browser.wait_for, "document.body.dataset.state === 'ready'")
    _check_tiles(await asyncio.to_thread(_tiles, browser), kpis)
    assert await asyncio.to_thread(browser.evaluate, "document.querySelector('#top-card').hidden")
    # The fragment is gone; the rest of the address stays.
    assert (
        await asyncio.to_thread(browser.evaluate, "location.search + location.hash") == "?range=7d"
    )
    assert browser.errors == []


async def test_a_token_in_the_query_is_not_used(
    live_server: str, db: asyncpg.Connection, browser: Browser
) -> None:
    """A ?token= link has sent its token to the server already: the page drops it from the
    address bar, does not sign in with it, and says how to open the page instead."""
    token = make_token("analyst", sub="dash")
    await asyncio.to_thread(browser.navigate, f"{live_server}/?token={token}")
    await asyncio.to_thread(browser.wait_for, "document.body.dataset.state === 'login'")
    assert await asyncio.to_thread(browser.evaluate, "location.search") == ""
    stored = "sessionStorage.getItem('molam.analytics.token')"
    assert await asyncio.to_thread(browser.evaluate, stored) is None
    notice = await asyncio.to_thread(
        browser.evaluate, "document.querySelector('#login-error').textContent"
    )
    assert "#token=" in notice
    assert browser.errors == []


async def test_the_policy_blocks_inline_script_and_the_browser_reports_it(
    live_server: str, browser: Browser
) -> None:
    """The pages run under the Content-Security-Policy, and a violation is a console error
    (so the tests above, which want none, would see one)."""
    await asyncio.to_thread(browser.navigate, f"{live_server}/")
    await asyncio.to_thread(browser.wait_for, "document.body.dataset.state === 'login'")
    assert browser.errors == []
    injected = """(() => { window.ran = false; const s = document.createElement('script');
        s.textContent = 'window.ran = true'; document.body.append(s); return window.ran; })()"""
    assert await asyncio.to_thread(browser.evaluate, injected) is False
    for _ in range(50):  # the report arrives as an event, read while awaiting other answers
        if any("Content Security Policy" in e for e in browser.errors):
            break
        await asyncio.to_thread(browser.evaluate, "1")
        await asyncio.sleep(0.02)
    assert any("Content Security Policy" in e for e in browser.errors), browser.errors


async def test_dashboard_asks_for_a_token(live_server: str, browser: Browser) -> None:
    await asyncio.to_thread(browser.navigate, f"{live_server}/")
    await asyncio.to_thread(browser.wait_for, "document.body.dataset.state === 'login'")
    assert (
        await asyncio.to_thread(
            browser.evaluate, "getComputedStyle(document.querySelector('#main')).display"
        )
        == "none"
    )
    assert await asyncio.to_thread(browser.evaluate, "!document.querySelector('#login').hidden")
    assert browser.errors == []


async def test_api_docs_render_offline(live_server: str, browser: Browser) -> None:
    """/docs uses the vendored Swagger UI (no CDN) and renders the operations."""
    await asyncio.to_thread(browser.navigate, f"{live_server}/docs")
    count = await asyncio.to_thread(
        browser.wait_for, "document.querySelectorAll('.opblock').length"
    )
    assert count >= 15
    assert browser.errors == []
