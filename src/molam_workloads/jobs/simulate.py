"""``molam-analytics simulate``: publish realistic synthetic transaction events.

Two modes. Real time (default): events happen now, at ``--rate`` per second, until ``--count``
transactions (0: until stopped). History (``--days-back N``): ``--count`` transactions spread
over the last N days with a daily rhythm, published as fast as ``--rate`` allows (0: no limit).

``--duplicate-rate`` re-publishes that share of events a little later (the same bytes, as a
retrying producer would); ``--write-source`` also inserts each transaction into
``wallet_transactions`` first, so the runbook's reconciliation holds end to end.
``--daily-rhythm`` makes real time follow the daily rhythm that history has (``--rate`` is then
the rate of an hour of average traffic). ``--run-id`` names the run in the transaction ids
(``SIM-<run id>-<n>``, default: the seed, else random): with ``--seed`` the merchants stay the
seed's while the traffic, drawn from seed and run id, is new, so runs can be repeated into
the same database. ``--anomaly [MERCHANT]`` multiplies one merchant's rate by
``--anomaly-factor`` during a spike window (its extra transactions come on top of
``--count``): in real time from ``--anomaly-after`` seconds after the start for
``--anomaly-seconds``, repeated every ``--anomaly-period`` seconds (0: once); in history mode
the last ``--anomaly-seconds`` before now.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from molam_workloads.core.db import create_pool
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.kafka import producer as kafka_producer
from molam_workloads.core.settings import DatabaseSettings, KafkaSettings, load_settings
from molam_workloads.jobs.traffic import (
    Market,
    Merchant,
    Spike,
    history_times,
    merchants,
    rhythm_at,
)

CHUNK = 500  # events written and published together
_SOURCE_COLUMNS = (
    "id", "merchant_id", "occurred_at", "amount", "currency", "country", "channel", "type",
    "status", "fee",
)  # fmt: skip


def _fraction(v: str) -> float:
    f = float(v)
    if not 0 <= f < 1:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return f


def _non_negative(v: str) -> float:
    f = float(v)
    if f < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return f


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rate", type=_non_negative, default=20.0, help="events/s (0: no limit)")
    parser.add_argument("--count", type=int, default=0, help="transactions (0: until stopped)")
    parser.add_argument("--merchants", type=int, default=50, help="number of merchants")
    parser.add_argument("--duplicate-rate", type=_fraction, default=0.02)
    parser.add_argument("--days-back", type=_non_negative, default=0, help="history mode")
    parser.add_argument("--seed", type=int, default=None, help="reproducible traffic")
    parser.add_argument("--run-id", default=None, help="in the txn ids (default: seed or random)")
    parser.add_argument("--daily-rhythm", action="store_true", help="real time: hourly rhythm")
    parser.add_argument("--topic", default=None, help="default: KAFKA_TOPIC")
    parser.add_argument("--write-source", action="store_true", help="insert wallet_transactions")
    parser.add_argument(
        "--anomaly", nargs="?", const="", default=None, metavar="MERCHANT",
        help="inject a spike for MERCHANT (default: the third largest, M-0003)",
    )  # fmt: skip
    parser.add_argument("--anomaly-factor", type=int, default=10)
    parser.add_argument("--anomaly-after", type=_non_negative, default=120.0, help="seconds")
    parser.add_argument("--anomaly-seconds", type=_non_negative, default=300.0)
    parser.add_argument("--anomaly-period", type=_non_negative, default=900.0, help="0: once")


@dataclass
class Tally:
    transactions: int = 0
    published: int = 0
    duplicates: int = 0
    spiked: int = 0


def _check(args: argparse.Namespace) -> None:
    if args.merchants < 1:
        raise ConfigError("--merchants must be >= 1")
    if args.count < 0:
        raise ConfigError("--count must be >= 0")
    if args.days_back and not args.count:
        raise ConfigError("--days-back needs --count (how many transactions to spread)")
    if args.anomaly_factor < 1:
        raise ConfigError("--anomaly-factor must be >= 1")
    if args.run_id is not None and not re.fullmatch(r"[A-Za-z0-9_.]{1,32}", args.run_id):
        raise ConfigError("--run-id: 1 to 32 letters, digits, '_' or '.'")


def market_of(args: argparse.Namespace) -> Market:
    """The seed's merchants; traffic from the seed, or from seed and ``--run-id`` when given."""
    rnd = random.Random(args.seed)
    roster = merchants(args.merchants, rnd)
    if args.run_id is not None:
        rnd = random.Random(f"{args.seed}/{args.run_id}")
    run_id = args.run_id or (secrets.token_hex(3) if args.seed is None else str(args.seed))
    return Market(roster, rnd, run_id=run_id)


def _spike(args: argparse.Namespace, roster: list[Merchant], now: datetime) -> Spike | None:
    if args.anomaly is None:
        return None
    merchant = args.anomaly or roster[min(2, len(roster) - 1)].id
    length = timedelta(seconds=args.anomaly_seconds)
    if args.days_back:
        return Spike(merchant, args.anomaly_factor, now - length, now)
    start = now + timedelta(seconds=args.anomaly_after)
    period = timedelta(seconds=args.anomaly_period) if args.anomaly_period else None
    return Spike(merchant, args.anomaly_factor, start, start + length, period)


def transactions(
    market: Market, spike: Spike | None, args: argparse.Namespace, now: datetime
) -> Iterator[tuple[dict[str, Any], bool]]:
    """(event document, part of a spike) in publishing order.

    ``--count`` counts the ordinary transactions; a spike's extra ones come on top, so a
    spike at the end of a history run is never cut short by the count.
    """
    by_id = {m.id: m for m in market.merchants}
    spiking = by_id.get(spike.merchant) if spike else None
    if args.days_back:
        times: Iterator[datetime] = history_times(
            args.count, now - timedelta(days=args.days_back), now, market.rnd
        )
    else:
        times = _now_forever()
    for produced, at in enumerate(times, start=1):
        doc = market.transaction(at)
        yield doc, False
        if spike and spiking and doc["merchant_id"] == spike.merchant and spike.active(at):
            for _ in range(spike.factor - 1):
                jitter = timedelta(seconds=market.rnd.uniform(-30, 0))
                yield market.transaction(max(at + jitter, spike.start), spiking), True
        if args.count and produced >= args.count:
            return


def _now_forever() -> Iterator[datetime]:
    while True:
        yield datetime.now(UTC)


def _source_row(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (
        doc["txn_id"],
        doc["merchant_id"],
        datetime.fromisoformat(doc["occurred_at"]),
        Decimal(doc["amount"]),
        doc["currency"],
        doc["country"],
        doc["channel"],
        doc["type"],
        doc["status"],
        Decimal(doc["fee"]),
    )


@contextlib.asynccontextmanager
async def _source_pool(write: bool) -> AsyncIterator[asyncpg.Pool | None]:
    if not write:
        yield None
        return
    async with create_pool(load_settings(DatabaseSettings), max_size=1) as pool:
        yield pool


async def run(args: argparse.Namespace) -> int:
    _check(args)
    kafka = load_settings(KafkaSettings)
    topic = args.topic or kafka.kafka_topic
    now = datetime.now(UTC)
    market = market_of(args)
    rnd, roster = market.rnd, market.merchants
    spike = _spike(args, roster, now)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        tally, elapsed = await _publish(args, market, spike, topic, kafka, rnd, now, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    total = tally.published + tally.duplicates
    print(
        f"published {total} events to {topic}: {tally.transactions} transactions "
        f"({tally.spiked} in the anomaly spike), {tally.duplicates} duplicates, "
        f"in {elapsed:.1f}s ({total / max(elapsed, 1e-9):.0f}/s)"
        + (", rows written to wallet_transactions" if args.write_source else "")
    )
    return 0


async def _publish(
    args: argparse.Namespace,
    market: Market,
    spike: Spike | None,
    topic: str,
    kafka: KafkaSettings,
    rnd: random.Random,
    now: datetime,
    stop: asyncio.Event,
) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    paced = 0.0  # seconds after start by which the transactions so far are due
    chunk_size = max(1, min(CHUNK, int(args.rate / 4))) if args.rate else CHUNK
    later: list[tuple[int, bytes, bytes]] = []  # (due after n published, key, value)
    async with (
        kafka_producer(kafka, linger_ms=10) as prod,
        _source_pool(args.write_source) as pool,
    ):
        stream = transactions(market, spike, args, now)
        while not stop.is_set():
            chunk = [d for d, _ in _take(stream, chunk_size, tally)]
            if not chunk:
                break
            if pool is not None:
                await pool.copy_records_to_table(
                    "wallet_transactions",
                    records=[_source_row(d) for d in chunk],
                    columns=list(_SOURCE_COLUMNS),
                )
            sends = []
            for doc in chunk:
                key = (doc["merchant_id"] or doc["txn_id"]).encode()
                value = json.dumps(doc, separators=(",", ":")).encode()
                sends.append(await prod.send(topic, value, key=key))
                if rnd.random() < args.duplicate_rate:
                    later.append((tally.published + rnd.randrange(1, 2000), key, value))
                tally.published += 1
            due = [item for item in later if item[0] <= tally.published]
            later = [item for item in later if item[0] > tally.published]
            for _, key, value in due:
                sends.append(await prod.send(topic, value, key=key))
                tally.duplicates += 1
            await asyncio.gather(*sends)
            if args.rate:
                rhythm = rhythm_at(datetime.now(UTC)) if args.daily_rhythm else 1.0
                paced += len(chunk) / (args.rate * rhythm)
                ahead = started + paced - time.monotonic()
                if ahead > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), ahead)
        # Every scheduled duplicate is still published: the run's duplicate rate is honest.
        for _, key, value in later:
            await prod.send(topic, value, key=key)
            tally.duplicates += 1
        await prod.flush()
    return tally, time.monotonic() - started


def _take(
    stream: Iterator[tuple[dict[str, Any], bool]], n: int, tally: Tally
) -> Iterator[tuple[dict[str, Any], bool]]:
    for _ in range(n):
        item = next(stream, None)
        if item is None:
            return
        tally.transactions += 1
        tally.spiked += item[1]
        yield item
