"""simulate -> consume -> refresh-views: the runbook's reconciliation holds end to end."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from helpers.ingest import Stack, assert_live_matches_db, running_consumer, wait_until
from redis.asyncio import Redis

from molam_workloads.core.errors import ConfigError
from molam_workloads.jobs import simulate
from molam_workloads.jobs.refresh_views import refresh

from .test_refresh_views import assert_runbook_reconciles


def _args(**kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_history_with_duplicates_and_an_anomaly_reconciles(
    stack: Stack, db: asyncpg.Connection, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(
        rate=0, count=1500, merchants=8, duplicate_rate=0.2, days_back=2, seed=5,
        write_source=True, anomaly="M-0002", anomaly_factor=8, anomaly_seconds=12 * 3600,
    )  # fmt: skip
    # A 12-hour spike: a 4-hour one fell in the night's trough when the test ran around 02:00
    # UTC (~15 transactions in the window), where chance alone kept the share below 2x.
    assert await simulate.run(args) == 0
    out = capsys.readouterr().out
    published = int(out.split("published ")[1].split()[0])
    transactions = int(out.split(": ")[1].split()[0])
    spiked = int(out.split("(")[1].split()[0])
    assert transactions == 1500 + spiked and spiked > 0
    assert published > transactions * 1.1  # duplicates

    async with running_consumer():
        await wait_until(lambda: _consumed(db, published), 30)
    assert await db.fetchval("SELECT count(*) FROM wallet_transactions") == transactions
    assert await db.fetchval("SELECT sum(tx_count) FROM txn_hourly_agg") == transactions
    await refresh(db)
    await assert_runbook_reconciles(db)
    await assert_live_matches_db(db, redis)

    # The spiking merchant's share of the traffic in the window is far above its usual share
    # (shares, not counts: the daily rhythm would make counts depend on the hour of the run).
    window_start = datetime.now(UTC) - timedelta(seconds=args.anomaly_seconds)
    spike_share, usual_share = await db.fetchrow(
        "SELECT avg((merchant_id IS NOT DISTINCT FROM $1)::int) FILTER (WHERE occurred_at >= $2),"
        "       avg((merchant_id IS NOT DISTINCT FROM $1)::int) FILTER (WHERE occurred_at < $2)"
        " FROM wallet_transactions",
        "M-0002",
        window_start,
    )
    assert spike_share > 2 * usual_share


async def _consumed(db: asyncpg.Connection, n: int) -> bool:
    total = await db.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")
    return bool(total == n)


async def test_real_time_mode_paces_and_stops_at_count(stack: Stack) -> None:
    started = datetime.now(UTC)
    assert await simulate.run(_args(rate=200, count=100, merchants=3, duplicate_rate=0)) == 0
    assert datetime.now(UTC) - started >= timedelta(seconds=0.4)


async def test_bad_options() -> None:
    with pytest.raises(simulate.ConfigError, match="--count"):
        await simulate.run(_args(days_back=2, count=0))


def test_a_run_id_keeps_the_seeds_merchants_and_draws_new_transactions() -> None:
    first = simulate.market_of(_args(seed=1, run_id="a1", merchants=10))
    again = simulate.market_of(_args(seed=1, run_id="a1", merchants=10))
    other = simulate.market_of(_args(seed=1, run_id="b2", merchants=10))
    plain = simulate.market_of(_args(seed=1, merchants=10))
    assert first.merchants == other.merchants == plain.merchants
    at = datetime.now(UTC)
    a = [first.transaction(at) for _ in range(50)]
    assert a == [again.transaction(at) for _ in range(50)]  # reproducible
    b = [other.transaction(at) for _ in range(50)]
    assert a[0]["txn_id"] == "SIM-a1-1" and b[0]["txn_id"] == "SIM-b2-1"
    assert {t["event_id"] for t in a}.isdisjoint(t["event_id"] for t in b)
    assert plain.transaction(at)["txn_id"] == "SIM-1-1"  # --seed alone: as before


@pytest.mark.parametrize("bad", ["", "a b", "x" * 33, "a/b"])
def test_a_run_id_is_a_short_plain_word(bad: str) -> None:
    with pytest.raises(ConfigError):
        simulate._check(_args(run_id=bad, count=1))
