"""Every analytics answer says how fresh its data is (`data_as_of`); the dashboard shows it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from helpers.browser import Browser
from redis.asyncio import Redis

from .conftest import Api, make_token
from .seed import hourly, insert_hourly

RANGE = "from=2025-07-01T00:00Z&to=2025-07-03T00:00Z"
ROUTES = [
    f"/v1/kpis?{RANGE}",
    f"/v1/timeseries?{RANGE}&granularity=day",
    f"/v1/timeseries?{RANGE}&granularity=hour",
    f"/v1/breakdowns/country?{RANGE}",
    f"/v1/top-merchants?{RANGE}",
]


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_every_answer_carries_the_watermark(
    api: Api, db: asyncpg.Connection, redis: Redis
) -> None:
    for url in ROUTES:  # no data yet
        body = (await api.get(url)).json()
        assert body["data_as_of"] is None, url

    hour = datetime(2025, 7, 2, 5, tzinfo=UTC)
    await insert_hourly(
        db, [hourly(hour, "M-1", tx_count=3), hourly(hour - timedelta(days=1), "M-2")]
    )
    await redis.flushdb()  # the answers above are cached
    for url in ROUTES:  # hourly rows only: the end of the newest hour
        body = (await api.get(url)).json()
        assert parse(body["data_as_of"]) == hour + timedelta(hours=1), url

    # minute buckets (the consumer writes both): the end of the newest minute, never ahead of
    # the clock
    minute = hour + timedelta(minutes=17)
    await db.execute(
        "INSERT INTO txn_minute_agg (minute, merchant_id, country, currency, channel, tx_count)"
        " VALUES ($1, 'M-1', 'SN', 'XOF', 'card', 1)",
        minute,
    )
    await redis.flushdb()
    body = (await api.get(ROUTES[0])).json()
    assert parse(body["data_as_of"]) == minute + timedelta(minutes=1)
    future = datetime.now(UTC) + timedelta(days=2)
    await db.execute(
        "INSERT INTO txn_minute_agg (minute, merchant_id, country, currency, channel, tx_count)"
        " VALUES ($1, 'M-1', 'SN', 'XOF', 'card', 1)",
        future,
    )
    await redis.flushdb()
    body = (await api.get(ROUTES[0])).json()
    assert parse(body["data_as_of"]) <= datetime.now(UTC)


async def test_the_dashboard_shows_it(
    live_server: str, db: asyncpg.Connection, browser: Browser
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    await insert_hourly(db, [hourly(hour, "M-1", tx_count=4, succeeded_count=4)])
    token = make_token("admin")
    async with httpx.AsyncClient(
        base_url=live_server, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        as_of = (await client.get("/v1/kpis")).json()["data_as_of"]
    assert parse(as_of) == hour + timedelta(hours=1)
    await asyncio.to_thread(browser.navigate, f"{live_server}/#token={token}")
    await asyncio.to_thread(browser.wait_for, "document.body.dataset.state === 'ready'")
    shown = await asyncio.to_thread(
        browser.evaluate, "document.querySelector('#updated').dataset.asOf"
    )
    assert parse(shown) == parse(as_of)
    text = await asyncio.to_thread(
        browser.evaluate, "document.querySelector('#updated').textContent"
    )
    assert "data as of" in text and "behind" in text
    assert browser.errors == []
