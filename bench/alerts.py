"""Benchmark: one alerts evaluation cycle for 10, 1,000 and 10,000 active rules.

Builds a throw-away database next to DATABASE_URL's, fills it with a realistic dataset
generated in SQL (default: 500 merchants, 48 h of minute buckets on two channels, about half
of the merchant-minutes active, plus 7 days of hourly buckets and a few hundred anomalies),
creates 10,000 varied rules (70 % merchant-scoped, 20 % scoped by country and/or channel,
10 % platform-wide; every metric; windows from 5 min to 3 days, a few beyond the minute
retention so they read hourly data), then for each rule count:

- ``set-based``: ``run_cycle`` (evaluation + state machine + every write), first cycle
  (opens alerts, queues webhooks) and the median of the following steady-state cycles;
- ``per-rule``: the naive design measured in the same run — one query per rule computing the
  same value, reading windows the same way (whole hours from ``txn_hourly_agg``; scope
  conditions only where set, so indexes apply); values only, no writes.
  Above ``--baseline-budget`` seconds it stops and extrapolates from the rules it ran.

Then the other hot path of issue 4, SIRA (``AnomalyDetector.on_batch``, called by the consumer
after every batch) on the same minute data: the first call (learns 48 buckets), a call that
closes a 15-minute bucket (judges every merchant and the platform, both metrics), and the
common call that closes nothing. Redis database ``BENCH_SIRA_REDIS_DB`` (12) is flushed.

Then the backtest (``core.backtest``) of one rule over 7 days of the same dataset (minutes for
the last ``--hours``, hours before): a platform-wide failure-rate rule, a merchant's, and a
platform-wide volume rule (FX conversion), each the median of ``--cycles`` runs, each run right
after a steady 10,000-rule cycle, with the median ratio of the pairs. Target: under 2 s.

Then a 10,000-rule cycle where 1 % of the rules push to an Alertmanager (a real one,
Debian's ``prometheus-alertmanager`` on a loopback port): the cycle, then the pusher's round
(every open alert of those rules, ``POST /api/v2/alerts`` in batches of 64), first and
steady (the re-post Alertmanager needs every minute).

Usage: ``python bench/alerts.py [--merchants 500] [--hours 48] [--cycles 5]`` with
``DATABASE_URL`` set (``make bench`` does it). Target: a 10,000-rule cycle under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg

from molam_workloads.alerts.alertmanager import AlertmanagerPusher
from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core import fx
from molam_workloads.core.backtest import backtest
from molam_workloads.core.db import migrate

COUNTRIES = [
    ("SN", "XOF"),
    ("CI", "XOF"),
    ("ML", "XOF"),
    ("NG", "NGN"),
    ("GH", "GHS"),
    ("KE", "KES"),
    ("MA", "MAD"),
    ("FR", "EUR"),
]
CHANNELS = ["mobile_money", "card"]
METRICS = [
    "tx_count",
    "gross_volume",
    "success_rate",
    "failure_rate",
    "refund_rate",
    "avg_ticket",
    "anomaly_count",
]
WINDOWS = [5] * 20 + [10] * 15 + [15] * 25 + [30] * 15 + [60] * 15 + [240] * 6 + [1440] * 3 + [4320]


def _db_url(dsn: str, name: str) -> str:
    return urlunparse(urlparse(dsn)._replace(path="/" + name))


GEN_MINUTES = """
INSERT INTO txn_minute_agg (minute, merchant_id, country, currency, channel, tx_count,
    succeeded_count, failed_count, pending_count, gross_volume_local, payment_count,
    payment_volume_local, refund_count, refund_volume_local, fee_local)
SELECT m, 'M-' || lpad(i::text, 4, '0'), c.country, c.currency, ch,
       v.ok + v.ko + v.pe, v.ok, v.ko, v.pe, v.vol, v.pay, v.vol, v.ref, v.ref * 900, v.vol / 100
FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 minute') m
CROSS JOIN generate_series(1, $3::int) i
CROSS JOIN unnest(ARRAY['mobile_money', 'card']) ch
CROSS JOIN LATERAL (SELECT (($4::text[])[1 + i % $5::int]) AS country,
                           (($6::text[])[1 + i % $5::int]) AS currency) c
CROSS JOIN LATERAL (
    SELECT ok, ko, pe, (ok * 0.9)::bigint AS pay, (ok * 0.9)::bigint * (1000 + i) AS vol,
           (ok / 12)::bigint AS ref
    FROM (SELECT 1 + floor(random() * (5 + i % 20))::bigint AS ok,
                 floor(random() * 3)::bigint AS ko, floor(random() * 2)::bigint AS pe
          WHERE random() < 0.5 + 0 * i + 0 * extract(epoch FROM m)) r
) v
"""

GEN_HOURS = """
INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count,
    succeeded_count, failed_count, pending_count, gross_volume_local, payment_count,
    payment_volume_local, refund_count, fee_local)
SELECT h, 'M-' || lpad(i::text, 4, '0'), c.country, c.currency, ch,
       v.ok + v.ko, v.ok, v.ko, 0, v.vol, v.pay, v.vol, v.ok / 12, v.vol / 100
FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 hour') h
CROSS JOIN generate_series(1, $3::int) i
CROSS JOIN unnest(ARRAY['mobile_money', 'card']) ch
CROSS JOIN LATERAL (SELECT (($4::text[])[1 + i % $5::int]) AS country,
                           (($6::text[])[1 + i % $5::int]) AS currency) c
CROSS JOIN LATERAL (
    SELECT ok, ko, (ok * 0.9)::bigint AS pay, (ok * 0.9)::bigint * (1000 + i) AS vol
    FROM (SELECT 30 + floor(random() * 300 + 0 * i + 0 * extract(epoch FROM h))::bigint AS ok,
                 floor(random() * 30)::bigint AS ko) r
) v
"""


def make_rules(n: int, merchants: int, seed: int = 42) -> list[tuple[object, ...]]:
    rnd = random.Random(seed)
    thresholds = {
        "tx_count": lambda w: Decimal(rnd.randint(1, 15) * w),
        "gross_volume": lambda w: Decimal(rnd.randint(1, 100) * w),
        "success_rate": lambda w: Decimal(rnd.choice(["0.5", "0.7", "0.8", "0.9"])),
        "failure_rate": lambda w: Decimal(rnd.choice(["0.05", "0.1", "0.2", "0.3"])),
        "refund_rate": lambda w: Decimal(rnd.choice(["0.02", "0.05", "0.1"])),
        "avg_ticket": lambda w: Decimal(rnd.randint(1, 40)),
        "anomaly_count": lambda w: Decimal(rnd.randint(0, 3)),
    }
    rows = []
    for k in range(n):
        metric = rnd.choice(METRICS)
        w = rnd.choice(WINDOWS)
        kind = rnd.random()
        merchant = country = currency = channel = None
        if kind < 0.7:
            i = rnd.randint(1, merchants)
            merchant = f"M-{i:04d}"
            if rnd.random() < 0.3:
                channel = rnd.choice(CHANNELS)
        elif kind < 0.9:
            country, currency = rnd.choice(COUNTRIES)
            if rnd.random() < 0.5:
                currency = None
            if rnd.random() < 0.5:
                channel = rnd.choice(CHANNELS)
        comparison = rnd.choice(["gt", "gte", "lt", "lte"])
        spec = {"metric": metric, "comparison": comparison, "windowMinutes": w}
        rows.append(
            (
                f"bench-{k:05d}",
                "api",
                metric,
                comparison,
                thresholds[metric](w),
                w,
                rnd.choice([0, 0, 60, 300]),
                rnd.choice(["info", "warning", "critical"]),
                merchant,
                country,
                currency,
                channel,
                json.dumps([{"url": "http://127.0.0.1:9/hook", "sendResolved": True}]),
                False,
                json.dumps(spec),
            )
        )
    return rows


def _parts(
    now: datetime, w: int, retention: int, split: int
) -> list[tuple[str, datetime, datetime]]:
    """The evaluator's reading of a window: (table, from, to) ranges."""
    lo = now - timedelta(minutes=w)
    if w > retention:
        return [("txn_hourly_agg", lo, now)]
    h_lo = lo.replace(minute=0, second=0, microsecond=0)
    if h_lo < lo:
        h_lo += timedelta(hours=1)
    h_hi = now.replace(minute=0, second=0, microsecond=0)
    if w >= split and h_hi > h_lo:
        return [
            ("txn_minute_agg", lo, h_lo),
            ("txn_hourly_agg", h_lo, h_hi),
            ("txn_minute_agg", h_hi, now),
        ]
    return [("txn_minute_agg", lo, now)]


def per_rule_sql(
    rule: asyncpg.Record, now: datetime, retention: int = 48 * 60, split: int = 180
) -> tuple[str, list[object]]:
    """The naive design: this one rule's value in its own query (same reading of the window
    as the evaluator: whole hours from txn_hourly_agg; scope conditions only where set)."""
    if rule["metric"] == "anomaly_count":
        sql = (
            "SELECT count(*) AS v FROM analytics_anomalies "
            "WHERE detected_at >= $1::timestamptz - make_interval(mins => $2) "
            "AND detected_at < $1"
        )
        params: list[object] = [now, rule["window_minutes"]]
        if rule["scope_merchant_id"]:
            sql += " AND merchant_id = $3"
            params.append(rule["scope_merchant_id"])
        return sql, params
    params = ["USD"]
    conds = []
    for column, key in (
        ("merchant_id", "scope_merchant_id"),
        ("country", "scope_country"),
        ("currency", "scope_currency"),
        ("channel", "scope_channel"),
    ):
        if rule[key] is not None:
            params.append(rule[key])
            conds.append(f"a.{column} = ${len(params)}")
    where = "".join(f" AND {c}" for c in conds)
    selects = []
    for table, f, t in _parts(now, rule["window_minutes"], retention, split):
        col = "minute" if table == "txn_minute_agg" else "hour"
        params += [f, t]
        selects.append(
            f"""SELECT a.currency, date_trunc('day', a.{col}, 'UTC') AS day,
                   sum(a.tx_count) tx, sum(a.succeeded_count) ok, sum(a.failed_count) ko,
                   sum(a.payment_count) pay, sum(a.refund_count) ref,
                   sum(a.payment_volume_local) vol
            FROM {table} a
            WHERE a.{col} >= ${len(params) - 1} AND a.{col} < ${len(params)} {where}
            GROUP BY 1, 2"""
        )
    sql = f"""
        WITH g AS ({" UNION ALL ".join(selects)})
        SELECT sum(tx) tx, sum(ok) ok, sum(ko) ko, sum(pay) pay, sum(ref) ref,
               sum(vol * {fx.rate_expr("g", "$1")}) vol
        FROM g {fx.rate_join("g", "g.day", "$1")}
    """
    return sql, params


def _value(metric: str, row: asyncpg.Record) -> Decimal | None:
    """The metric from a per-rule row, as the evaluator defines it (None: no data)."""
    if metric == "anomaly_count":
        return Decimal(row["v"])
    tx, ok, ko, pay, ref, vol = (row[k] or 0 for k in ("tx", "ok", "ko", "pay", "ref", "vol"))
    settled = ok + ko
    return {
        "tx_count": Decimal(tx),
        "gross_volume": Decimal(vol),
        "success_rate": Decimal(ok) / settled if settled else None,
        "failure_rate": Decimal(ko) / settled if settled else None,
        "refund_rate": Decimal(ref) / pay if pay else None,
        "avg_ticket": Decimal(vol) / pay if pay else None,
    }[metric]


def _same(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= Decimal("1e-9") * max(abs(a), abs(b), Decimal(1))


async def baseline(
    pool: asyncpg.Pool, rules: list[asyncpg.Record], now: datetime, budget: float
) -> tuple[float, int, int]:
    """Seconds for one query per rule (extrapolated past ``budget``), rules actually run, and
    how many of their values differ from what the set-based cycle stored."""
    stored = {
        r["rule_id"]: r["last_value"]
        for r in await pool.fetch("SELECT rule_id, last_value FROM analytics_alert_rule_state")
    }
    started = time.perf_counter()
    done = mismatches = 0
    async with pool.acquire() as conn:
        for r in rules:
            sql, params = per_rule_sql(r, now)
            row = await conn.fetchrow(sql, *params)
            done += 1
            if not _same(_value(r["metric"], row), stored.get(r["id"])):
                mismatches += 1
            if time.perf_counter() - started > budget:
                break
    elapsed = time.perf_counter() - started
    return elapsed * len(rules) / done, done, mismatches


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merchants", type=int, default=500)
    ap.add_argument("--hours", type=int, default=48)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--counts", default="10,1000,10000")
    ap.add_argument("--baseline-budget", type=float, default=60.0)
    ap.add_argument("--keep", action="store_true", help="keep the bench database")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("molam_workloads.ingest.sira").setLevel(logging.ERROR)
    admin = os.environ.get("DATABASE_URL")
    if not admin:
        print("DATABASE_URL is not set (run through 'make bench')", file=sys.stderr)
        return 2
    name = f"molam_bench_alerts_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _db_url(admin, name)
    try:
        await migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, command_timeout=600)
        try:
            return await run(pool, dsn, args)
        finally:
            await pool.close()
    finally:
        if not args.keep:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


async def run(pool: asyncpg.Pool, dsn: str, args: argparse.Namespace) -> int:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    countries = [c for c, _ in COUNTRIES]
    currencies = [cur for _, cur in COUNTRIES]
    t = time.perf_counter()
    await pool.execute(
        GEN_MINUTES,
        now - timedelta(hours=args.hours),
        now - timedelta(minutes=1),
        args.merchants,
        countries,
        len(countries),
        currencies,
    )
    # Hours: the roll-up of the minute buckets (as the consumer writes both), and synthetic
    # hours before the minute data starts.
    await pool.execute(
        """
        INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count,
            succeeded_count, failed_count, pending_count, gross_volume_local, payment_count,
            payment_volume_local, refund_count, refund_volume_local, fee_local)
        SELECT date_trunc('hour', minute, 'UTC'), merchant_id, country, currency, channel,
               sum(tx_count), sum(succeeded_count), sum(failed_count), sum(pending_count),
               sum(gross_volume_local), sum(payment_count), sum(payment_volume_local),
               sum(refund_count), sum(refund_volume_local), sum(fee_local)
        FROM txn_minute_agg GROUP BY 1, 2, 3, 4, 5
        """
    )
    first_hour = now.replace(minute=0) - timedelta(hours=args.hours)
    await pool.execute(
        GEN_HOURS,
        first_hour - timedelta(days=7) + timedelta(hours=args.hours),
        first_hour - timedelta(hours=1),
        args.merchants,
        countries,
        len(countries),
        currencies,
    )
    await pool.execute(
        """
        INSERT INTO analytics_anomalies (anomaly_key, merchant_id, metric, bucket, value,
            baseline, zscore, direction, detected_at)
        SELECT 'bench-' || g, 'M-' || lpad((1 + g % $2)::text, 4, '0'), 'tx_count',
               $1::timestamptz - g * interval '7 minutes', 100, 10, 5, 'spike',
               $1::timestamptz - g * interval '7 minutes'
        FROM generate_series(1, 400) g
        """,
        now,
        args.merchants,
    )
    await pool.execute("ANALYZE")
    minute_rows = await pool.fetchval("SELECT count(*) FROM txn_minute_agg")
    hour_rows = await pool.fetchval("SELECT count(*) FROM txn_hourly_agg")
    print(
        f"dataset: {args.merchants} merchants, {minute_rows:,} minute rows ({args.hours} h), "
        f"{hour_rows:,} hourly rows (7 d), generated in {time.perf_counter() - t:.1f} s"
    )
    counts = [int(c) for c in args.counts.split(",")]
    rows = make_rules(max(counts), args.merchants)
    await pool.copy_records_to_table(
        "analytics_alert_rules",
        records=rows,
        columns=[
            "name",
            "source",
            "metric",
            "comparison",
            "threshold",
            "window_minutes",
            "for_seconds",
            "severity",
            "scope_merchant_id",
            "scope_country",
            "scope_currency",
            "scope_channel",
            "webhooks",
            "is_active",
            "spec",
        ],
    )
    settings = AlertsSettings(database_url=dsn)
    print(
        f"{'rules':>7} | {'set-based 1st cycle':>19} | {'steady cycle (median)':>21} | "
        f"{'per-rule queries':>16} | {'speed-up':>8} | firing"
    )
    for n in counts:
        await pool.execute(
            "UPDATE analytics_alert_rules SET is_active = (name <= $1)", f"bench-{n - 1:05d}"
        )
        await pool.execute("DELETE FROM analytics_alerts")
        await pool.execute("DELETE FROM analytics_alert_rule_state")
        await pool.execute("VACUUM ANALYZE analytics_alert_rules")
        first = await run_cycle(pool, settings, now=now)
        steady = []
        report = first
        for _ in range(1, args.cycles):
            report = await run_cycle(pool, settings, now=now)  # the same instant again
            steady.append(report.duration_s)
        med = statistics.median(steady) if steady else first.duration_s
        active = await pool.fetch(
            "SELECT * FROM analytics_alert_rules WHERE is_active ORDER BY name"
        )
        base, ran, wrong = await baseline(pool, active, now, args.baseline_budget)
        note = "" if ran == len(active) else f" (extrapolated from {ran})"
        note += f"; values differing from per-rule: {wrong}/{ran}"
        print(
            f"{n:>7,} | {first.duration_s * 1000:>16.0f} ms | {med * 1000:>18.0f} ms | "
            f"{base * 1000:>13.0f} ms | {base / med:>7.1f}x | {report.firing}{note}"
        )
    await bench_backtest(pool, settings, now, args.cycles)
    await bench_alertmanager(pool, dsn, now, max(counts), args.cycles)
    await bench_sira(pool, dsn, now, args.merchants)
    return 0


async def bench_backtest(
    pool: asyncpg.Pool, settings: AlertsSettings, now: datetime, repeats: int
) -> None:
    """7 days of one rule replayed, each time right after a steady cycle of the 10,000 rules.

    Pairing them gives both the same spell of a shared machine's load, whose swings (2–3x
    within a run) would otherwise decide a ratio taken between medians minutes apart.
    """
    base = {
        "comparison": "gt",
        "threshold": Decimal("0.08"),
        "window_minutes": 15,
        "for_seconds": 300,
        "no_data_state": "nodata",
        "scope_merchant_id": None,
        "scope_country": None,
        "scope_currency": None,
        "scope_channel": None,
    }
    cases = [
        ("platform failure_rate 15 min", {"metric": "failure_rate"}),
        ("merchant failure_rate 15 min", {"metric": "failure_rate", "scope_merchant_id": "M-0042"}),
        (
            "platform gross_volume 60 min",
            {"metric": "gross_volume", "window_minutes": 60, "threshold": Decimal("1e9")},
        ),
    ]
    print(
        f"{'backtest, 7 days of one rule':<30} | {'median':>8} | {'cycle beside':>12} | "
        f"{'/ cycle':>7} | evaluations | firings"
    )
    for label, over in cases:
        rule = {**base, "name": label, **over}
        times, cycles, ratios = [], [], []
        result = None
        for _ in range(repeats):
            cycle = (await run_cycle(pool, settings, now=now)).duration_s
            started = time.perf_counter()
            async with pool.acquire() as conn:
                result = await backtest(
                    conn, rule, now - timedelta(days=7), now, reporting_currency="USD", now=now
                )
            times.append(time.perf_counter() - started)
            cycles.append(cycle)
            ratios.append(times[-1] / cycle)
        assert result is not None
        med = statistics.median(times)
        print(
            f"{label:<30} | {med * 1000:>5.0f} ms | {statistics.median(cycles) * 1000:>9.0f} ms"
            f" | {statistics.median(ratios):>6.2f}x | {result.evaluations:>11,} | "
            f"{len(result.firings)}"
        )


async def _start_alertmanager(tmp: Path) -> tuple[asyncio.subprocess.Process, str] | None:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        return None
    (tmp / "am.yml").write_text(
        "route: {receiver: blackhole, group_wait: 30s}\nreceivers: [{name: blackhole}]\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={tmp / 'am.yml'}",
        f"--storage.path={tmp}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=error",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):  # ready within 10 s
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return proc, url
        except OSError:
            await asyncio.sleep(0.1)
    proc.terminate()
    return None


async def bench_alertmanager(
    pool: asyncpg.Pool, dsn: str, now: datetime, n: int, cycles: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-am-") as tmp:
        started = await _start_alertmanager(Path(tmp))
        if started is None:
            print("Alertmanager: skipped (prometheus-alertmanager not installed)")
            return
        proc, url = started
        try:
            await pool.execute(
                """
                UPDATE analytics_alert_rules SET is_active = (name <= $1),
                    alertmanagers = CASE WHEN right(name, 2) = '00' THEN $2::jsonb
                                         ELSE '[]'::jsonb END
                """,
                f"bench-{n - 1:05d}",
                json.dumps([url]),
            )
            await pool.execute("DELETE FROM analytics_alerts")
            await pool.execute("DELETE FROM analytics_alert_rule_state")
            # As before the cycles above: the UPDATE left a dead copy of every rule behind, which
            # each cycle would scan until autovacuum came round.
            await pool.execute("VACUUM ANALYZE analytics_alert_rules")
            settings = AlertsSettings(database_url=dsn, alert_webhook_allow="127.0.0.1")
            pusher = AlertmanagerPusher(pool, settings)
            am_rules = await pool.fetchval(
                "SELECT count(*) FROM analytics_alert_rules "
                "WHERE is_active AND alertmanagers <> '[]'"
            )
            try:
                first = await run_cycle(pool, settings, now=now)
                t = time.perf_counter()
                outcomes = await pusher.push_once()
                first_push = time.perf_counter() - t
                cycle_s, push_s = [], []
                for _ in range(1, cycles):
                    report = await run_cycle(pool, settings, now=now)
                    cycle_s.append(report.duration_s)
                    t = time.perf_counter()
                    outcomes = await pusher.push_once()
                    push_s.append(time.perf_counter() - t)
            finally:
                await pusher.aclose()
            posted = await pool.fetchval(
                "SELECT count(*) FROM analytics_alerts WHERE alertmanagers <> '[]'"
            )
            assert all(o.ok for o in outcomes), outcomes
            cyc = statistics.median(cycle_s) if cycle_s else first.duration_s
            push = statistics.median(push_s) if push_s else first_push
            print(
                f"Alertmanager: {n:,} rules, {am_rules} pushing to a real Alertmanager, "
                f"{posted} alert(s) posted per round in {len(outcomes)} POST(s): cycle "
                f"{first.duration_s * 1000:.0f} ms then {cyc * 1000:.0f} ms (median); push "
                f"round {first_push * 1000:.0f} ms then {push * 1000:.0f} ms; cycle + push "
                f"{(cyc + push) * 1000:.0f} ms (target < 2000 ms)"
            )
        finally:
            proc.terminate()
            await proc.wait()


async def bench_sira(pool: asyncpg.Pool, dsn: str, now: datetime, merchants: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from redis.asyncio import Redis

    from molam_workloads.core.kafka import producer as kafka_producer
    from molam_workloads.core.settings import SiraSettings
    from molam_workloads.ingest.sira import AnomalyDetector

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    redis_base = os.environ.get("REDIS_URL")
    if not bootstrap or not redis_base:
        print("SIRA: skipped (KAFKA_BOOTSTRAP_SERVERS / REDIS_URL not set)")
        return
    topic = f"bench.anomaly.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    redis_url = urlunparse(
        urlparse(redis_base)._replace(path="/" + os.environ.get("BENCH_SIRA_REDIS_DB", "12"))
    )
    redis = Redis.from_url(redis_url, decode_responses=True)
    await redis.flushdb()
    settings = SiraSettings(sira_bucket_minutes=15)
    bucket = timedelta(minutes=15)
    clock = {"now": now - timedelta(hours=24)}
    names = {f"M-{i:04d}" for i in range(1, merchants + 1)}
    try:
        async with kafka_producer(bootstrap) as producer:
            det = AnomalyDetector(
                settings, pool, redis, producer, topic, clock=lambda: clock["now"]
            )
            t = time.perf_counter()
            await det.on_batch(names, clock["now"])
            first = time.perf_counter() - t
            closes = []
            for _ in range(95):
                clock["now"] += bucket
                t = time.perf_counter()
                await det.on_batch(names, clock["now"])
                closes.append(time.perf_counter() - t)
            idle = []
            for _ in range(200):
                t = time.perf_counter()
                await det.on_batch({"M-0001"}, clock["now"])
                idle.append(time.perf_counter() - t)
        found = await pool.fetchval("SELECT count(*) FROM analytics_anomalies WHERE zscore <> 5")
        closes.sort()
        idle.sort()
        series = 2 * (merchants + 1)
        print(
            f"SIRA, {merchants} merchants ({series} series): first call (learns 48 buckets) "
            f"{first * 1000:.0f} ms; bucket close median {closes[len(closes) // 2] * 1000:.0f}"
            f" ms, p95 {closes[int(len(closes) * 0.95)] * 1000:.0f} ms; call closing nothing "
            f"median {idle[len(idle) // 2] * 1000:.2f} ms; {found} anomalies in 95 buckets of "
            "random data"
        )
    finally:
        await redis.flushdb()
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
