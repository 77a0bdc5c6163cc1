"""Benchmark: API latency of KPIs, time series and top merchants, cached and uncached.

Builds a throw-away database next to DATABASE_URL's with ``--days`` (90) days x ``--merchants``
(500) merchants x 24 hours of ``txn_hourly_agg`` rows (>= 1M rows, generated in SQL, one
country/currency/channel per merchant, several currencies, merchants of different sizes, an FX
rate per currency and day), refreshes ``mv_txn_daily_agg`` and
records the refresh, builds the merchant-less rollup (as the API does after a refresh), then
starts ``molam-analytics api`` twice as separate processes: one with
``CACHE_TTL_SECONDS=0`` (every request computed in PostgreSQL) and one with a cache. The load
comes from ``wrk`` (another process; Debian package, ``stack/system-deps.sh``) with
``--concurrency`` (32) connections:

- uncached: a Lua script draws a random range (1-90 days, ending up to 30 days ago, whole
  hours) for every request, against the server without cache;
- cached: three fixed ranges (7, 30, 90 days), warmed once, against the server with cache;
- bare uvicorn (the ceiling, right after the cached row): the same script against a bare ASGI
  app (``bench/_bare_asgi.py``: one constant small JSON body) served with the API's own
  uvicorn configuration, uvloop and httptools, so the cached figure can be read against what
  one such process can serve at all on this machine.

Beside each row, the bare SQL time of the same queries: ``queries.aggregates.grouped`` (or
``top_merchants``, as the route runs it) called directly over asyncpg, with the API's session
settings, on the same random ranges, one at a time.
Every mode also runs at concurrency 1, the service time without queueing, and open loop: a
fixed rate (``--load-fraction`` of the closed-loop throughput just measured, default 1/4) with
up to ``--concurrency`` requests in flight, latency counted from each request's scheduled time
(a client process of its own). On a small machine a closed loop of 32 connections measures
mostly the queue (Little's law: latency = requests in flight / throughput).

Sizes (``--size``): ``1m`` (500 merchants x 90 days, 1.08M hourly rows), ``10m`` (600 x 730,
10.5M), ``50m`` (2,850 x 730, 49.9M). The ranges drawn are the same at every size, so what
grows is the history and the number of merchants. A dataset is kept between runs in a database
``molam_bench_<merchants>x<days>`` on the same server (``--fresh`` rebuilds it; drop it by hand
to free the disk: ~0.3 GB per million hourly rows), with the running totals (migration 070),
the daily view and its rollups built as ``refresh-views`` and the API build them.

The floor, in the same run: ``/v1/alerts?limit=10`` (an empty page, the cheapest request that
reads the database) against the uncached server, same wrk settings, warmed for 3 s, then
measured before and after the endpoints; each uncached closed-loop row prints its throughput as
a ratio to the better of the two.
``--rate R`` runs every open-loop row at R requests/s (the same at every size) instead of a
fraction of the closed-loop throughput. ``--uncached-only`` skips the cached and bare rows.

Usage: ``python bench/api.py [--size 1m] [--duration 8] [--rate 50]`` with the local
stack's environment (``make bench``). Targets: uncached p95 < 50 ms, cached p95 < 5 ms;
uncached KPIs, breakdowns and top merchants at 32 connections >= 0.5x the floor's throughput;
uncached p95 at a fixed rate at most 1.5x from 1M to 50M hourly rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import jwt

from molam_workloads.api.app import SESSION_SETTINGS
from molam_workloads.api.queries import rollup
from molam_workloads.api.queries.aggregates import (
    Filters,
    Key,
    Ranking,
    grouped,
    top_merchants,
)
from molam_workloads.api.queries.prefix import StateCache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import env, table, with_database

from molam_workloads.core import ranks
from molam_workloads.core.db import migrate
from molam_workloads.core.measures import KEYS, MEASURES

SIZES = {"1m": (500, 90), "10m": (600, 730), "50m": (2850, 730)}

MARKETS = [
    ("SN", "XOF"),
    ("CI", "XOF"),
    ("ML", "XOF"),
    ("CM", "XAF"),
    ("NG", "NGN"),
    ("GH", "GHS"),
    ("KE", "KES"),
    ("MA", "MAD"),
    ("FR", "EUR"),
    ("US", "USD"),
]

GENERATE = """
INSERT INTO txn_hourly_agg (hour, merchant_id, country, currency, channel, tx_count,
    succeeded_count, failed_count, pending_count, gross_volume_local, payment_count,
    payment_volume_local, refund_count, refund_volume_local, fee_local)
SELECT h, 'M-' || lpad(i::text, 4, '0'), m.country, m.currency,
       CASE WHEN i % 3 = 0 THEN 'card' ELSE 'mobile_money' END,
       v.ok + v.ko + v.pe, v.ok, v.ko, v.pe, round(v.vol * 1.15, 4), v.pay, v.vol,
       v.ref, round(v.vol * 0.02, 4), round(v.vol * 0.012, 4)
FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 hour') h
CROSS JOIN generate_series(1, $3::int) i
CROSS JOIN LATERAL (SELECT ($4::text[])[1 + i % $5::int] AS country,
                           ($6::text[])[1 + i % $5::int] AS currency) m
CROSS JOIN LATERAL (
    -- i and h named inside: a value per row (an uncorrelated LATERAL runs once per statement,
    -- which gave every merchant the same figures); merchants 1x to ~10x apart in size.
    SELECT (5 + random() * 40 + 0 * i)::int AS ok, (random() * 5)::int AS ko,
           (random() * 2)::int AS pe, (random() * 3)::int AS ref, (5 + random() * 30)::int AS pay,
           round(((1000 + random() * 50000) * (1 + (i * 7919) % 97 / 10.0)
                  + 0 * extract(epoch FROM h))::numeric, 4) AS vol) v
"""

# The consumer writes minute buckets beside the hourly ones, and keeps the last hours of them
# (MINUTE_AGG_RETENTION_HOURS): the dataset's last hour again as minute rows, each hourly row's
# events in its last minute. Without any, the API's watermark (analytics_data_as_of) takes its
# fallback through every hourly partition, which no live system does.
_BUCKET = ", ".join((*KEYS, *MEASURES))
MINUTES = f"""
INSERT INTO txn_minute_agg (minute, {_BUCKET})
SELECT hour + interval '59 minutes', {_BUCKET}
FROM txn_hourly_agg WHERE hour = (SELECT max(hour) FROM txn_hourly_agg)
  AND NOT EXISTS (SELECT 1 FROM txn_minute_agg)
"""

# A rate per currency and day, within 3% of the seeded one (which is constant otherwise), so
# that conversion by the day's rate is exercised as in production.
FX_DAILY = """
INSERT INTO fx_rates (day, currency, quote, rate)
SELECT d::date, f.currency, f.quote, f.rate * (1 + 0.03 * sin(extract(epoch FROM d) / 86400 / 7
                                                   + ascii(f.currency)))
FROM fx_rates f CROSS JOIN generate_series($1::date, $2::date, interval '1 day') d
WHERE f.quote = 'USD' AND f.currency <> 'USD'
ON CONFLICT DO NOTHING
"""


async def build_dataset(dsn: str, merchants: int, days: int, end: datetime) -> int:
    start = end - timedelta(days=days)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT ensure_txn_hourly_partitions($1, $2)", start, end)
        await conn.execute(FX_DAILY, start.date(), end.date())
        countries = [c for c, _ in MARKETS]
        currencies = [cur for _, cur in MARKETS]
        t0 = time.perf_counter()
        day = start
        while day < end:  # a day per statement keeps memory flat
            nxt = min(day + timedelta(days=1), end)
            await conn.execute(
                GENERATE,
                day,
                nxt - timedelta(hours=1),
                merchants,
                countries,
                len(MARKETS),
                currencies,
            )
            day = nxt
        rows: int = await conn.fetchval("SELECT count(*) FROM txn_hourly_agg")
        print(f"dataset: {rows:,} hourly rows in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE txn_hourly_agg")
        await conn.execute("REFRESH MATERIALIZED VIEW mv_txn_daily_agg")
        await conn.execute("VACUUM ANALYZE mv_txn_daily_agg")
        await conn.execute(
            "INSERT INTO analytics_view_refreshes (view_name, refreshed_at) "
            "VALUES ('mv_txn_daily_agg', now()) "
            "ON CONFLICT (view_name) DO UPDATE SET refreshed_at = now()"
        )
        mv_rows = await conn.fetchval("SELECT count(*) FROM mv_txn_daily_agg")
        print(
            f"refresh + analyze: {time.perf_counter() - t0:.1f} s, {mv_rows:,} daily rows",
            flush=True,
        )
        t0 = time.perf_counter()
        await rollup.rebuild(conn)  # what the API does in the background after a refresh
        await conn.execute(f"VACUUM ANALYZE {rollup.TABLE}")
        rollup_rows = await conn.fetchval(f"SELECT count(*) FROM {rollup.TABLE}")
        print(
            f"merchant-less rollup: {time.perf_counter() - t0:.1f} s, {rollup_rows:,} rows",
            flush=True,
        )
        await build_totals(conn, end)
        await conn.execute(MINUTES)
        await conn.execute(
            "CREATE TABLE bench_meta (merchants int, days int, dataset_end timestamptz, "
            "hourly_rows bigint)"
        )
        await conn.execute(
            "INSERT INTO bench_meta VALUES ($1, $2, $3, $4)", merchants, days, end, rows
        )
        return rows
    finally:
        await conn.close()


async def build_totals(conn: asyncpg.Connection, end: datetime) -> None:
    """The running totals (migration 070) as ``refresh-views`` builds them, up to ``end``."""
    t0 = time.perf_counter()
    async with conn.transaction():
        built = await conn.fetchval(
            "SELECT analytics_rebuild_prefix_totals('USD', cutoff => $1)", end
        )
        blocks = await ranks.rebuild(conn)
    await conn.execute("VACUUM ANALYZE analytics_prefix_hourly")
    await conn.execute("VACUUM ANALYZE analytics_prefix_daily")
    await conn.execute("VACUUM ANALYZE analytics_prefix_intraday")
    await conn.execute("VACUUM ANALYZE analytics_prefix_ranks")
    seconds = time.perf_counter() - t0
    print(f"running totals: {seconds:.1f} s, {built:,} rows, {blocks:,} ranking blocks", flush=True)


async def cached_dataset(merchants: int, days: int, fresh: bool) -> tuple[str, datetime, int]:
    """The DSN of the kept dataset (built first if missing), its end and its row count."""
    admin = env("DATABASE_URL")
    name = f"molam_bench_{merchants}x{days}"
    dsn = with_database(admin, name)
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and fresh:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if exists:
            db = await asyncpg.connect(dsn)
            try:
                meta = await db.fetchrow(
                    "SELECT dataset_end, hourly_rows FROM bench_meta"
                    if await db.fetchval("SELECT to_regclass('bench_meta')")
                    else "SELECT NULL AS dataset_end"
                )
            finally:
                await db.close()
            if meta is not None and meta["dataset_end"] is not None:
                await migrate(dsn)  # a newer tree may bring migrations
                db = await asyncpg.connect(dsn)
                try:
                    usable = await db.fetchval(
                        "SELECT count(*) FROM analytics_prefix_state s JOIN "
                        "analytics_fx_version v ON v.version = s.fx_version "
                        "WHERE s.cutoff = $1 AND s.intraday_rows IS NOT NULL",
                        meta["dataset_end"],
                    )
                    if not usable:
                        await build_totals(db, meta["dataset_end"])
                    async with db.transaction():  # a dataset kept from before migration 140
                        await ranks.rebuild(db)
                    await db.execute(MINUTES)  # datasets kept from before it
                finally:
                    await db.close()
                print(f"dataset: kept database {name}, {meta['hourly_rows']:,} hourly rows")
                return dsn, meta["dataset_end"], int(meta["hourly_rows"])
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # an unfinished build
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    await migrate(dsn)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    rows = await build_dataset(dsn, merchants, days, end)
    return dsn, end, rows


# --- the three queries, as the API asks them -----------------------------------------------


def random_range(rnd: random.Random, end: datetime) -> tuple[datetime, datetime]:
    """Same distribution as the wrk script: 1-90 days ending up to 30 days before ``end``."""
    to = end - timedelta(hours=rnd.randint(0, 24 * 30))
    start = to - timedelta(days=rnd.randint(1, 90), hours=rnd.randint(0, 23))
    return start, to


ENDPOINTS: dict[str, dict[str, Any]] = {
    "kpis": {"path": "/v1/kpis", "extra": "", "keys": ()},
    "timeseries (day)": {
        "path": "/v1/timeseries",
        "extra": "&granularity=day",
        "keys": (Key("bucket", "(hour AT TIME ZONE $1)::date", "day"),),
        "params": ("UTC",),
    },
    "breakdown (country)": {
        "path": "/v1/breakdowns/country",
        "extra": "",
        "keys": (Key("key", "country::text", "country::text"),),
    },
    "breakdown (merchant)": {
        "path": "/v1/breakdowns/merchant",
        "extra": "&limit=10",
        "keys": (Key("key", "merchant_id", "merchant_id"),),
        "per_merchant": True,
        "ranking": Ranking("gross_volume", 10),  # as routers.breakdowns asks
    },
    "top merchants": {
        "path": "/v1/top-merchants",
        "extra": "&limit=10",
        "top": 10,  # queries.aggregates.top_merchants, as the route runs it
    },
}


async def bare_sql(dsn: str, name: str, end: datetime, samples: int) -> list[float]:
    spec = ENDPOINTS[name]
    rnd = random.Random(7)
    conn = await asyncpg.connect(dsn, server_settings=SESSION_SETTINGS)  # the API's sessions
    states = StateCache()  # as the API keeps it
    times = []
    try:
        for i in range(samples + 5):
            start, to = random_range(rnd, end)
            t0 = time.perf_counter()
            if "top" in spec:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    await top_merchants(
                        conn,
                        start=start,
                        end=to,
                        filters=Filters(),
                        reporting_currency="USD",
                        by="gross_volume",
                        limit=spec["top"],
                        states=states,
                    )
            else:
                await grouped(
                    conn,
                    start=start,
                    end=to,
                    filters=Filters(),
                    keys=spec["keys"],
                    reporting_currency="USD",
                    extra_params=spec.get("params", ()),
                    per_merchant=spec.get("per_merchant", False),
                    ranking=spec.get("ranking"),
                    states=states,
                )
            if i >= 5:  # the first few warm the caches
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        await conn.close()
    return times


# --- servers and load ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(
    dsn: str, redis_url: str, secret: str, ttl: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc_env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "ANALYTICS_JWT_SECRET": secret,
        "CACHE_TTL_SECONDS": str(ttl),
        "DB_POOL_MAX": "16",
        "LOG_LEVEL": "WARNING",
    }
    cli = shutil.which("molam-analytics", path=os.path.dirname(sys.executable)) or "molam-analytics"
    proc = subprocess.Popen([cli, "api", "--port", str(port), "--host", "127.0.0.1"], env=proc_env)
    return proc, wait_ready(proc, port)


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    """The ceiling: a bare ASGI app (one constant JSON body) served as the API is served."""
    port = free_port()
    bare = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bare_asgi.py")
    proc = subprocess.Popen([sys.executable, bare, str(port)], env={**os.environ})
    return proc, wait_ready(proc, port)


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/openapi.json", timeout=2):
                return base
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.2)


def http_get(url: str, token: str) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body: bytes = resp.read()
        return body


LUA_RANDOM = """
local token = "%(token)s"
local path = "%(path)s"
local extra = "%(extra)s"
local last = %(end)d
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("seed", counter) end
init = function(args) math.randomseed(os.time() * 1000 + seed) end
request = function()
  local to = last - math.random(0, 24 * 30) * 3600
  local from = to - math.random(1, 90) * 86400 - math.random(0, 23) * 3600
  local p = string.format("%%s?from=%%s&to=%%s%%s", path,
    os.date("!%%Y-%%m-%%dT%%H:00:00Z", from), os.date("!%%Y-%%m-%%dT%%H:00:00Z", to), extra)
  return wrk.format("GET", p, {["Authorization"] = "Bearer " .. token})
end
"""

LUA_FIXED = """
local token = "%(token)s"
local paths = {%(paths)s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], {["Authorization"] = "Bearer " .. token})
end
"""

LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %.3f %.3f %.3f\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def run_wrk(base: str, lua: str, connections: int, duration: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua + LUA_DONE)
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(2, connections)}",
                f"-c{connections}",
                f"-d{duration}s",
                "--timeout",
                "10s",
                "-s",
                script,
                base,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
    n, errors, micros, p50, p95, p99 = line.split()[1:]
    return {
        "rps": int(n) / (int(micros) / 1e6),
        "errors": int(errors),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
    }


# --- open loop: a fixed request rate, up to `concurrency` in flight, latency from the
# scheduled send time (a late start counts, so a stalled server cannot hide its backlog).


async def _http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, token: str
) -> int:
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def open_loop(
    base: str, paths: Callable[[], str], token: str, rate: float, duration: float, conns: int
) -> dict[str, float]:
    u = urlparse(base)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        free.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    errors = 0

    async def one(due: float, path: str) -> None:
        nonlocal errors
        conn = await free.get()
        try:
            status = await _http_get(*conn, f"{host}:{port}", path, token)
            if status != 200:
                errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            errors += 1
            conn = await asyncio.open_connection(host, port)
        latencies.append((time.perf_counter() - due) * 1000)
        free.put_nowait(conn)

    tasks = []
    start = time.perf_counter()
    total = int(rate * duration)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, paths())))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not free.empty():
        _, writer = free.get_nowait()
        writer.close()
    return {
        "rps": len(latencies) / elapsed,
        "errors": errors,
        "p50": pct(latencies, 50),
        "p95": pct(latencies, 95),
        "p99": pct(latencies, 99),
    }


def random_path(spec: dict[str, Any], end: datetime) -> Callable[[], str]:
    rnd = random.Random()

    def make() -> str:
        start, to = random_range(rnd, end)
        return (
            f"{spec['path']}?from={start.strftime('%Y-%m-%dT%H:00:00Z')}"
            f"&to={to.strftime('%Y-%m-%dT%H:00:00Z')}{spec['extra']}"
        )

    return make


def run_open_loop_child(
    base: str, mode: str, name: str, end: int, token: str, rate: float, duration: float, conns: int
) -> dict[str, float]:
    """The open-loop load, in a process of its own (like wrk)."""
    import json

    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--open-loop-child",
        json.dumps(
            {
                "base": base,
                "mode": mode,
                "name": name,
                "end": end,
                "token": token,
                "rate": rate,
                "duration": duration,
                "conns": conns,
            }
        ),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


async def _child(arg: str) -> None:
    import json

    a = json.loads(arg)
    spec = ENDPOINTS[a["name"]]
    end = datetime.fromtimestamp(a["end"], UTC)
    if a["mode"] == "uncached":
        paths = random_path(spec, end)
    else:
        fixed = cached_paths(spec, end)
        counter = iter(range(10**9))

        def paths() -> str:
            return fixed[next(counter) % len(fixed)]

    result = await open_loop(a["base"], paths, a["token"], a["rate"], a["duration"], a["conns"])
    print(json.dumps(result))


def cached_paths(spec: dict[str, Any], end: datetime) -> list[str]:
    return [
        f"{spec['path']}?from="
        f"{(end - timedelta(days=d)).strftime('%Y-%m-%dT%H:00:00Z')}"
        f"&to={end.strftime('%Y-%m-%dT%H:00:00Z')}{spec['extra']}"
        for d in (7, 30, 90)
    ]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def fmt(ms: float) -> str:
    return f"{ms:.2f}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1m")
    parser.add_argument("--merchants", type=int, help="instead of the size's")
    parser.add_argument("--days", type=int, help="instead of the size's")
    parser.add_argument("--fresh", action="store_true", help="rebuild the kept dataset")
    parser.add_argument("--rate", type=float, help="open-loop requests/s (default: a fraction)")
    parser.add_argument("--uncached-only", action="store_true")
    parser.add_argument("--only", help="comma-separated endpoint names to run")
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per row")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sql-samples", type=int, default=60)
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.25,
        help="open-loop rate as a fraction of the closed-loop throughput measured just before",
    )
    parser.add_argument("--open-loop-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open_loop_child:
        await _child(args.open_loop_child)
        return 0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: run stack/system-deps.sh")

    merchants, days = SIZES[args.size]
    args.merchants = args.merchants or merchants
    args.days = args.days or days
    redis_base = urlparse(env("REDIS_URL"))
    redis_url = urlunparse(redis_base._replace(path="/" + os.environ.get("BENCH_REDIS_DB", "14")))
    secret = secrets.token_urlsafe(32)
    token = jwt.encode(
        {"sub": "bench", "role": "admin", "exp": int(time.time()) + 3600}, secret, "HS256"
    )

    dsn, end, n_rows = await cached_dataset(args.merchants, args.days, args.fresh)
    endpoints = {k: v for k, v in ENDPOINTS.items() if not args.only or k in args.only.split(",")}
    floors: list[dict[str, float]] = []
    lua_floor = LUA_FIXED % {"token": token, "paths": '"/v1/alerts?limit=10"'}
    servers: list[subprocess.Popen[bytes]] = []
    try:
        uncached_proc, uncached = start_api(dsn, redis_url, secret, ttl=0)
        servers.append(uncached_proc)
        cached_proc, cached = start_api(dsn, redis_url, secret, ttl=600)
        servers.append(cached_proc)
        bare_proc, bare = start_bare()
        servers.append(bare_proc)
        from redis.asyncio import Redis

        r = Redis.from_url(redis_url)
        await r.flushdb()
        await r.aclose()

        rows: list[list[str]] = []
        ceiling: list[str] = []
        ratios: list[str] = []

        async def floor() -> dict[str, float]:
            res = await asyncio.to_thread(
                run_wrk, uncached, lua_floor, args.concurrency, args.duration
            )
            floors.append(res)
            rows.append(
                [
                    "floor: /v1/alerts?limit=10",
                    f"uncached c={args.concurrency}",
                    f"{res['rps']:.0f}",
                    str(res["errors"]),
                    fmt(res["p50"]),
                    fmt(res["p95"]),
                    fmt(res["p99"]),
                    "",
                    "",
                ]
            )
            print("  ".join(rows[-1]), flush=True)
            return res

        # A fresh server's first seconds are slower (statements prepared, pool filled, caches
        # cold): warmed first, so that the floor is not understated, nor the ratios flattered.
        await asyncio.to_thread(run_wrk, uncached, lua_floor, args.concurrency, 3)
        await floor()
        saturations: dict[str, float] = {}
        for name, spec in endpoints.items():
            sql = await bare_sql(dsn, name, end, args.sql_samples)
            sql_cells = [fmt(statistics.median(sql)), fmt(pct(sql, 95))]
            lua_random = LUA_RANDOM % {
                "token": token,
                "path": spec["path"],
                "extra": spec["extra"],
                "end": int(end.timestamp()),
            }
            fixed = cached_paths(spec, end)
            for path in fixed:  # warm the cache
                await asyncio.to_thread(http_get, cached + path, token)
            lua_fixed = LUA_FIXED % {
                "token": token,
                "paths": ", ".join(f'"{p}"' for p in fixed),
            }
            plan: list[tuple[str, str, str, int]] = [
                ("uncached", uncached, lua_random, args.concurrency),
                ("uncached", uncached, lua_random, 1),
            ]
            if not args.uncached_only:
                plan += [
                    ("cached", cached, lua_fixed, args.concurrency),
                    # the ceiling, right after: same wrk script against a bare uvicorn app
                    ("bare uvicorn", bare, lua_fixed, args.concurrency),
                    ("cached", cached, lua_fixed, 1),
                ]
            saturation: dict[str, float] = {}
            p95s: dict[str, float] = {}
            for mode, base, lua, conns in plan:
                res = await asyncio.to_thread(run_wrk, base, lua, conns, args.duration)
                if conns == args.concurrency:
                    saturation[mode] = res["rps"]
                    p95s[mode] = res["p95"]
                rows.append(
                    [
                        name,
                        f"{mode} c={conns}",
                        f"{res['rps']:.0f}",
                        str(res["errors"]),
                        fmt(res["p50"]),
                        fmt(res["p95"]),
                        fmt(res["p99"]),
                        *(sql_cells if mode == "uncached" else ["", ""]),
                    ]
                )
                print("  ".join(rows[-1]), flush=True)
            saturations[name] = saturation["uncached"]
            if not args.uncached_only:
                ceiling.append(
                    f"  {name}: cached c={args.concurrency} {saturation['cached']:.0f} "
                    f"req/s, p95 {fmt(p95s['cached'])} ms; bare uvicorn "
                    f"{saturation['bare uvicorn']:.0f} req/s, p95 "
                    f"{fmt(p95s['bare uvicorn'])} ms; cached/bare throughput "
                    f"{saturation['cached'] / saturation['bare uvicorn']:.2f}x"
                )
            modes = [("uncached", uncached)]
            if not args.uncached_only:
                modes.append(("cached", cached))
            for mode, base in modes:
                rate = args.rate or max(1.0, saturation[mode] * args.load_fraction)
                res = await asyncio.to_thread(
                    run_open_loop_child,
                    base,
                    mode,
                    name,
                    int(end.timestamp()),
                    token,
                    rate,
                    args.duration,
                    args.concurrency,
                )
                rows.append(
                    [
                        name,
                        f"{mode} open {rate:.0f}/s",
                        f"{res['rps']:.0f}",
                        str(res["errors"]),
                        fmt(res["p50"]),
                        fmt(res["p95"]),
                        fmt(res["p99"]),
                        *(sql_cells if mode == "uncached" else ["", ""]),
                    ]
                )
                print("  ".join(rows[-1]), flush=True)
        last = await floor()
        # Against the better of the two floors: a ratio is never flattered by a slow spell.
        best = max(floors[0]["rps"], last["rps"])
        for name, rps in saturations.items():
            ratios.append(
                f"  {name}: uncached c={args.concurrency} {rps:.0f} req/s"
                f" = {rps / best:.2f}x the floor's {best:.0f}"
            )
        ratios.append(
            f"  floor before / after the endpoints: {floors[0]['rps']:.0f} / "
            f"{last['rps']:.0f} req/s"
        )
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    print()
    print(
        f"API benchmark: {n_rows:,} hourly rows ({args.merchants} merchants x {args.days} days x"
        f" 24 h); c=N: wrk closed "
        f"loop, open R/s: fixed rate; {os.cpu_count()} CPUs shared by PostgreSQL, Redis, the "
        f"API and the load; load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        table(
            [
                "endpoint",
                "mode",
                "req/s",
                "errors",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "SQL p50 ms",
                "SQL p95 ms",
            ],
            rows,
            left=2,
        )
    )
    print("\nUncached throughput against the empty-page floor (same server, same run):")
    print("\n".join(ratios))
    if ceiling:
        print("\nThe ceiling (bare uvicorn: same config, uvloop, httptools, wrk script):")
        print("\n".join(ceiling))
    return 0


def _entry() -> Callable[[], int]:
    return lambda: asyncio.run(main())


if __name__ == "__main__":
    sys.exit(_entry()())
