"""``POST /v1/alert-rules/{name}/backtest``: the rule replayed over the stored aggregates,
with the readers' visibility of rules and 422 for a range it cannot replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from .conftest import Api, auth
from .seed import insert_rule

M = timedelta(minutes=1)


async def test_backtest_answers_the_firings(api: Api, db: asyncpg.Connection) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # M-1: healthy for an hour, then 8 minutes at 50 % failures, then healthy again.
    await db.execute(
        """
        INSERT INTO txn_minute_agg (minute, merchant_id, country, currency, channel, tx_count,
                                    succeeded_count, failed_count)
        SELECT $1::timestamptz + g * interval '1 minute', 'M-1', 'SN', 'XOF', 'card',
               10, CASE WHEN g BETWEEN 60 AND 67 THEN 5 ELSE 10 END,
               CASE WHEN g BETWEEN 60 AND 67 THEN 5 ELSE 0 END
        FROM generate_series(0, 99) g
        """,
        now - 100 * M,
    )
    await insert_rule(db, "m1-fail", "M-1")  # failure_rate gt 0.2 over 15 minutes
    frm = (now - 80 * M).isoformat()
    r = await api.client.post(
        "/v1/alert-rules/m1-fail/backtest", params={"from": frm}, headers=auth("analyst")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rule"] == "m1-fail" and body["firingsTotal"] == 1
    (firing,) = body["firings"]
    # The window holds 6 failing minutes (30 / 150, not > 0.2), then 7 (35 / 150): fired then.
    assert datetime.fromisoformat(firing["firedAt"]) == now - 33 * M
    assert firing["resolution"] == "minute" and firing["resolvedAt"] is not None
    assert firing["value"] > 0.2 and firing["peak"] >= firing["value"]

    # The merchant reads its own rule's backtest; another merchant gets a 404.
    own = await api.client.post(
        "/v1/alert-rules/m1-fail/backtest", params={"from": frm}, headers=auth("merchant", "M-1")
    )
    assert own.status_code == 200 and own.json()["firingsTotal"] == 1
    other = await api.client.post(
        "/v1/alert-rules/m1-fail/backtest", params={"from": frm}, headers=auth("merchant", "M-2")
    )
    assert other.status_code == 404
    missing = await api.client.post("/v1/alert-rules/nope/backtest", headers=auth("ops"))
    assert missing.status_code == 404


async def test_backtest_refuses_what_it_cannot_replay(api: Api, db: asyncpg.Connection) -> None:
    await insert_rule(db, "r", None)
    now = datetime.now(UTC)
    future = await api.client.post(
        "/v1/alert-rules/r/backtest",
        params={"from": (now + timedelta(days=1)).isoformat()},
        headers=auth("ops"),
    )
    assert future.status_code == 422, future.text
    long = await api.client.post(
        "/v1/alert-rules/r/backtest",
        params={"from": (now - timedelta(days=40)).isoformat(), "to": now.isoformat()},
        headers=auth("ops"),
    )
    assert long.status_code == 422 and "31 days" in long.text
    anonymous = await api.client.post("/v1/alert-rules/r/backtest")
    assert anonymous.status_code == 401
