"""``make run``: the whole system on one machine, the way users install it.

Starts (or reuses) the local stack, creates the database ``molam_demo`` and migrates it, and
seeds two weeks of history with a daily rhythm (``wallet_transactions`` written set-based,
then ``backfill``), so the dashboard and SIRA's baselines look like a running platform's from
the first screen. Then:

* with a node (``make stack`` as root where Docker runs; NODE_IP in .stack/env): builds the
  image (``make image``), ``helm upgrade --install``s charts/molam-analytics into namespace
  ``molam`` with the operator watching it and the pipeline ``analytics`` (api, consumer, alerts
  pods; the refresh-views CronJob), and forwards 127.0.0.1:8082 to the API's Service;
* without one: the same workloads as local processes (and the operator as a process when a
  control plane runs).

Either way ``simulate`` sends live traffic at the history's rate from the host, with a spike
SIRA catches and a failure-rate rule whose webhook is logged. Prints where to look; Ctrl-C
stops everything it started (in Kubernetes: deletes the pipeline, then uninstalls the release).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("MOLAM_STACK_STATE", ROOT / ".stack"))
LOGS = STATE / "logs"
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("MOLAM_CACHE_DIR", Path.home() / ".cache" / "molam-analytics"))
KUBE_BIN = CACHE / "k8s" / "bin"
NAMESPACE = "molam"
RELEASE = "molam"
PIPELINE = "analytics"
CHART = ROOT / "charts" / "molam-analytics"
# make run's own database and Redis database on the stack's servers (never `postgres`, never
# the Redis database others use): reruns find their own data and nobody else's.
DEMO_DATABASE = "molam_demo"
DEMO_REDIS_DB = 1
# The simulated market: its merchants come from this seed (history and live traffic alike).
DEMO_SEED = 1
HISTORY_DAYS = 14
# Transactions in an hour of average traffic (the daily rhythm puts nights at a tenth of it and
# the evening peak at 1.8x): ~0.5 M rows for two weeks, seeded in seconds, and a live rate of
# well under one event per second that the charts show as the continuation of the history.
HISTORY_PER_HOUR = 1500


def say(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def load_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip('"').replace("$PATH", os.environ.get("PATH", ""))
    return env


def with_database(dsn: str, name: str) -> str:
    return urlunparse(urlparse(dsn)._replace(path="/" + name))


def with_host(url: str, host: str) -> str:
    """``url`` with its host (not its port or credentials) replaced by ``host``."""
    u = urlparse(url)
    creds, _, hostport = u.netloc.rpartition("@")
    port = hostport.rpartition(":")[2] if ":" in hostport else ""
    netloc = (creds + "@" if creds else "") + host + (":" + port if port else "")
    return urlunparse(u._replace(netloc=netloc))


class Supervisor:
    """Child processes in their own process groups, stopped in reverse order."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        LOGS.mkdir(parents=True, exist_ok=True)
        out = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(
            argv,
            env={**self.env, **extra_env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(STATE),
        )
        self.children.append((name, proc))
        say(f"started {name} (pid {proc.pid}, log {LOGS / (name + '.log')})")
        return proc

    def check(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None and not name.startswith("port-forward"):
                return f"{name} exited with {proc.returncode} (see {LOGS / (name + '.log')})"
        return None

    def stop_one(self, proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.children):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            say(f"stopped {name}")
        self.children.clear()


class WebhookReceiver(BaseHTTPRequestHandler):
    """Stands in for Alertmanager or a chat hook: logs every alert notification it gets."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(LOGS / "webhook.log", "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def start_webhook_receiver(host: str = "127.0.0.1") -> str:
    """On loopback for local processes; on the node address for pods."""
    server = ThreadingHTTPServer((host, 0), WebhookReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_address[1]}/alerts"


def http_json(method: str, url: str, token: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def answers(url: str, ok_only: bool = False) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return not ok_only  # it answers (503 while a dependency warms up)
    except OSError:
        return False


def wait_http(
    url: str, timeout: float, sup: Supervisor, tick: Any = None, ok_only: bool = False
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = sup.check()
        if failed:
            raise SystemExit(f"[run] {failed}")
        if tick is not None:
            tick()
        if answers(url, ok_only):
            return
        time.sleep(0.5)
    raise SystemExit(f"[run] {url} did not answer within {timeout:.0f}s")


def mint_token(secret: str, role: str, sub: str, merchant_id: str | None = None) -> str:
    import jwt

    claims: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time()) + 30 * 86400}
    if merchant_id:
        claims["merchant_id"] = merchant_id
    return str(jwt.encode(claims, secret, algorithm="HS256"))


def kube_available() -> bool:
    wanted = os.environ.get("STACK_KUBE", "auto")
    if wanted == "0":
        return False
    return wanted == "1" or (KUBE_BIN / "kube-apiserver").exists()


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120) -> str:
    out = subprocess.run(
        [str(KUBE_BIN / "kubectl"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if out.returncode:
        raise subprocess.CalledProcessError(
            out.returncode, ["kubectl", *args], out.stdout, out.stderr
        )
    return out.stdout


# --- two weeks of history --------------------------------------------------------------------

# One statement: the planned (merchant, start, seconds, count) slices expand to transactions whose
# type, channel, status, amount and fee follow the same mix as simulate's (jobs/traffic.py).
HISTORY_SQL = """
WITH m AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::numeric[], $6::int[],
                         $7::float8[], $8::float8[], $9::float8[])
        WITH ORDINALITY AS m(id, currency, country, ticket, scale, c1, c2, c3, mi)),
r AS MATERIALIZED (
    SELECT p.mi, p.t0 + make_interval(secs => random() * p.span) AS at,
           random() AS rk, random() AS rc, random() AS rs, random() AS rw,
           sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z
    FROM unnest($10::int[], $11::timestamptz[], $12::float8[], $13::int[]) AS p(mi, t0, span, n),
         generate_series(1, p.n)),
k AS (
    SELECT r.*, m.*,
           CASE WHEN rk < 0.86 THEN 'payment' WHEN rk < 0.90 THEN 'refund'
                WHEN rk < 0.96 THEN 'payout' ELSE 'transfer' END AS type,
           CASE WHEN rc < c1 THEN 'mobile_money' WHEN rc < c2 THEN 'card'
                WHEN rc < c3 THEN 'bank_transfer' ELSE 'wallet' END AS ch
    FROM r JOIN m USING (mi)),
t AS (
    SELECT k.*,
           CASE WHEN rs < (CASE WHEN ch = 'card' THEN 0.86 ELSE 0.93 END) THEN 'succeeded'
                WHEN rs < 0.98 THEN 'failed' ELSE 'pending' END AS status,
           greatest(round(ticket * exp(0.9 * z)::numeric
                          * (CASE WHEN type IN ('payout', 'transfer') THEN 3 ELSE 1 END),
                          scale), 1) AS amount,
           type = 'transfer' AND rw < 0.6 AS w2w
    FROM k)
INSERT INTO wallet_transactions (id, merchant_id, occurred_at, amount, currency, country,
                                 channel, type, status, fee)
SELECT $1 || row_number() OVER (), CASE WHEN w2w THEN NULL ELSE id END, at, amount, currency,
       country, CASE WHEN w2w THEN 'wallet' ELSE ch END, type, status,
       CASE WHEN type = 'payment' AND status = 'succeeded'
            THEN round(amount * (CASE WHEN ch = 'card' THEN 0.029 ELSE 0.015 END), scale)
            ELSE 0 END
FROM t
"""


def history_plan(
    start: datetime, end: datetime, weights: list[float], per_hour: float, rnd: random.Random
) -> list[tuple[int, datetime, float, int]]:
    """(merchant number from 1, slice start, slice seconds, transactions) for [start, end).

    Each hour gets ``per_hour`` times its share of the daily rhythm, split among the merchants
    by weight, with Poisson-like noise; partial hours at the ends get their part of it. Past
    days are a little busier or quieter than average (today is average, as live traffic is).
    """
    from molam_workloads.jobs.traffic import rhythm_at

    today = end.date()
    days: dict[object, float] = {}
    plan = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        lo, hi = max(hour, start), min(hour + timedelta(hours=1), end)
        day = days.setdefault(
            hour.date(), 1.0 if hour.date() == today else min(max(rnd.gauss(1, 0.08), 0.8), 1.2)
        )
        expected = per_hour * day * rhythm_at(hour) * (hi - lo).total_seconds() / 3600
        for i, w in enumerate(weights, start=1):
            mu = expected * w
            n = max(0, round(rnd.gauss(mu, math.sqrt(mu)))) if mu > 0 else 0
            if n:
                plan.append((i, lo, (hi - lo).total_seconds(), n))
        hour += timedelta(hours=1)
    return plan


async def _seed(dsn: str, start: datetime, end: datetime, merchants: int, per_hour: float) -> int:
    import asyncpg

    from molam_workloads.core.currencies import CURRENCIES
    from molam_workloads.jobs.traffic import merchants as roster_of

    roster = roster_of(merchants, random.Random(DEMO_SEED))  # simulate --seed's merchants
    plan = history_plan(start, end, [m.weight for m in roster], per_hour, random.Random())
    if not plan:
        return 0
    cum = []
    for m in roster:
        total, acc, c = sum(m.channels), 0.0, []
        for w in m.channels[:3]:
            acc += w / total
            c.append(acc)
        cum.append(c)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            HISTORY_SQL,
            f"DEMO-{int(end.timestamp()):x}-",
            [m.id for m in roster],
            [m.currency for m in roster],
            [m.country for m in roster],
            [m.ticket for m in roster],
            [CURRENCIES[m.currency] for m in roster],
            [c[0] for c in cum],
            [c[1] for c in cum],
            [c[2] for c in cum],
            *map(list, zip(*plan, strict=True)),
        )
    finally:
        await conn.close()
    return sum(n for *_, n in plan)


def seed_history(env: dict[str, str], days: float, merchants: int, per_hour: float) -> None:
    """Fill the last ``days`` up to now, from where the data already there ends, then backfill.

    A rerun only adds the time since the last one (its rows get new ids): ``wallet_transactions``
    keeps one continuous history, and ``backfill`` makes the aggregates of those days equal
    to it, whatever the consumer had counted.
    """
    if days <= 0:
        return
    end = datetime.now(UTC).replace(microsecond=0)
    newest = subprocess.run(
        ["psql", env["DATABASE_URL"], "-Atc", "SELECT max(occurred_at) FROM wallet_transactions"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    start = end - timedelta(days=days)
    if newest:
        start = max(start, datetime.fromisoformat(newest).astimezone(UTC))
    if end - start < timedelta(minutes=1):
        say(f"history: 0 transactions to add (the newest is from {start:%H:%M:%S} UTC)")
        return
    t0 = time.monotonic()
    count = asyncio.run(_seed(env["DATABASE_URL"], start, end, merchants, per_hour))
    first, last = start.date(), end.date()
    subprocess.run(
        [
            str(BIN / "molam-analytics"),
            "backfill",
            "--from",
            first.isoformat(),
            "--to",
            last.isoformat(),
            "--quiet",
            "--jobs",
            "2",
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    say(
        f"history: {count} transactions from {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC"
        f" seeded and backfilled in {time.monotonic() - t0:.1f}s"
    )


def forget_sira_pointer(env: dict[str, str]) -> None:
    """SIRA then learns its baselines from the (new) recent history before judging live data."""
    subprocess.run(
        ["redis-cli", "-u", env["REDIS_URL"], "DEL", "sira:pointer"],
        env=env,
        capture_output=True,
        check=False,
    )


def live_simulate_argv(args: argparse.Namespace) -> list[str]:
    """Live traffic: the history's merchants and rhythm (a fresh run id), a spike SIRA flags."""
    rate = args.rate if args.rate is not None else HISTORY_PER_HOUR / 3600
    return [
        str(BIN / "molam-analytics"),
        "simulate",
        "--rate",
        f"{rate:.4f}",
        *([] if args.rate is not None else ["--daily-rhythm"]),
        "--merchants",
        str(args.merchants),
        "--seed",
        str(DEMO_SEED),
        "--run-id",
        f"{int(time.time()):x}",
        "--write-source",
        "--anomaly",
        "--anomaly-after",
        "60",
        "--anomaly-seconds",
        str(args.anomaly_seconds),
        "--anomaly-factor",
        "10",
    ]


def put_demo_rule(base: str, admin: str, hook_url: str) -> None:
    """A rule that fires within minutes (about 7% of the simulated transactions fail), created
    or, kept from an earlier run, pointed at this run's webhook receiver."""
    spec = {
        "metric": "failure_rate",
        "comparison": "gt",
        "threshold": 0.05,
        "windowMinutes": 5,
        "severity": "warning",
        "notify": {"webhooks": [{"url": hook_url}]},
    }
    for attempt in range(10):  # 503 while the API's first database connections warm up
        try:
            http_json("PUT", f"{base}/v1/alert-rules/demo-failure-rate", admin, spec)
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 9:
                raise
            time.sleep(1)


# --- the local-process mode ------------------------------------------------------------------


def setup_kube(env: dict[str, str], sup: Supervisor, args: argparse.Namespace) -> None:
    kubectl(env, "apply", "-f", str(ROOT / "crds"))
    for crd in ("alertrules.analytics.molam.io", "analyticspipelines.analytics.molam.io"):
        kubectl(env, "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    kubectl(
        env,
        "apply",
        "-f",
        "-",
        stdin=kubectl(env, "create", "namespace", NAMESPACE, "--dry-run=client", "-o", "yaml"),
    )
    # The runbook's kubectl lines without -n (e.g. `kubectl scale deployment analytics-api`)
    # act on the current context's namespace: make it the system's.
    kubectl(env, "config", "set-context", "--current", f"--namespace={NAMESPACE}")
    for name, value in (
        ("analytics-db", env["DATABASE_URL"]),
        ("analytics-redis", env["REDIS_URL"]),
    ):
        manifest = kubectl(
            env,
            "create",
            "secret",
            "generic",
            name,
            f"--from-literal=url={value}",
            "-n",
            NAMESPACE,
            "--dry-run=client",
            "-o",
            "yaml",
        )
        kubectl(env, "apply", "-f", "-", stdin=manifest)
    sup.start(
        "operator",
        [
            str(BIN / "molam-analytics"),
            "operator",
            "--namespace",
            NAMESPACE,
            "--liveness",
            f"http://127.0.0.1:{args.operator_health_port}/healthz",
        ],
        OPERATOR_METRICS_PORT=str(args.operator_metrics_port),
    )
    for sample in sorted((ROOT / "crds" / "samples").glob("*.yaml")):
        kubectl(env, "apply", "-n", NAMESPACE, "-f", str(sample))
    # The sample names the in-cluster broker; here the operator measures lag on the local one.
    kafka = {"bootstrapServers": env["KAFKA_BOOTSTRAP_SERVERS"]}
    if env.get("KAFKA_TOPIC"):
        kafka["topic"] = env["KAFKA_TOPIC"]
    patch = {"spec": {"kafka": kafka}}
    kubectl(
        env, "patch", "ap", PIPELINE, "-n", NAMESPACE, "--type", "merge", "-p", json.dumps(patch)
    )


def run_processes(
    env: dict[str, str], args: argparse.Namespace, sup: Supervisor, use_kube: bool
) -> dict[str, Any]:
    """consume, api, alerts and simulate as local processes; returns what the banner shows."""
    cli = str(BIN / "molam-analytics")
    hook_url = start_webhook_receiver()
    # SIRA judges closed buckets against a learnt baseline: for a demo that shows an anomaly
    # within minutes, 1-minute buckets (the history gives them their baseline).
    sira_demo = {"SIRA_BUCKET_MINUTES": "1", "SIRA_GRACE_SECONDS": "10", "SIRA_MIN_HISTORY": "10"}
    sup.start(
        "consume",
        [cli, "consume", "--metrics-port", str(args.consumer_metrics_port)],
        **sira_demo,
    )
    sup.start("api", [cli, "api", "--port", str(args.api_port)])
    sup.start(
        "alerts",
        [cli, "alerts", "--interval", "10"],
        METRICS_PORT=str(args.alerts_metrics_port),
        ALERT_WEBHOOK_ALLOW="127.0.0.1",  # the demo receiver is on loopback
    )
    sup.start("simulate", live_simulate_argv(args))
    base = f"http://127.0.0.1:{args.api_port}"
    wait_http(f"{base}/health", 60, sup)
    admin = mint_token(env["ANALYTICS_JWT_SECRET"], "admin", "make-run")
    put_demo_rule(base, admin, hook_url)
    if use_kube:
        setup_kube(env, sup, args)
    return {
        "admin": admin,
        "lines": [
            f"  Metrics     {base}/metrics  (consumer :{args.consumer_metrics_port},"
            f" alerts :{args.alerts_metrics_port})",
            f"  Logs        {LOGS}/",
            f"  Kubernetes  kubectl get ap,ar,deploy,cronjob -n {NAMESPACE}  (the operator"
            " reconciles; the workloads are the local processes)"
            if use_kube
            else "  Kubernetes  not started (STACK_KUBE=1 builds the local control plane)",
        ],
    }


# --- the Kubernetes mode -----------------------------------------------------------------------


class PortForward:
    """``kubectl port-forward`` to the API's Service, restarted when it stops answering.

    kubectl forwards to one pod and stays up when that pod goes (a rollout, a deleted pod):
    every connection then fails. So it is also restarted after two failed /health probes in a
    row; at most ``MAX_RESTARTS`` times in ``WINDOW`` seconds, then make run gives up.
    """

    MAX_RESTARTS = 10
    WINDOW = 300.0
    PROBE_EVERY = 5.0

    def __init__(self, sup: Supervisor, env: dict[str, str], port: int, service: str) -> None:
        self.sup, self.env, self.port, self.service = sup, env, port, service
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts: list[float] = []
        self.failures = 0
        self.next_probe = 0.0

    def start(self) -> None:
        self.proc = self.sup.start(
            "port-forward",
            [
                str(KUBE_BIN / "kubectl"),
                "port-forward",
                "-n",
                NAMESPACE,
                "--address",
                "127.0.0.1",
                f"svc/{self.service}",
                f"{self.port}:http",
            ],
        )
        self.next_probe = time.monotonic() + 2

    def restart(self, why: str) -> None:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.WINDOW] + [now]
        if len(self.restarts) > self.MAX_RESTARTS:
            raise SystemExit(
                f"[run] port-forward: {why}; restarted {self.MAX_RESTARTS} times in"
                f" {self.WINDOW:.0f}s, giving up (see {LOGS / 'port-forward.log'})"
            )
        say(f"port-forward: {why}; restarting it")
        if self.proc is not None:
            self.sup.stop_one(self.proc)
            self.sup.children = [(n, p) for n, p in self.sup.children if p is not self.proc]
        self.failures = 0
        self.start()

    def tick(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.restart("it exited")
            return
        now = time.monotonic()
        if now < self.next_probe:
            return
        self.next_probe = now + self.PROBE_EVERY
        if answers(f"http://127.0.0.1:{self.port}/health"):
            self.failures = 0
        else:
            self.failures += 1
            if self.failures >= 2:
                self.restart("the API stopped answering through it")


def helm(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    home = STATE / "helm-home"
    home.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["helm", *args],
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if out.returncode:
        raise SystemExit(f"[run] helm {args[0]} failed:\n{out.stderr.strip()}")
    return out.stdout


def wait_namespace_usable(env: dict[str, str], timeout: float = 120) -> None:
    """A namespace still Terminating (a teardown in progress) refuses new objects: wait it out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            phase = kubectl(env, "get", "ns", NAMESPACE, "-o", "jsonpath={.status.phase}")
        except subprocess.CalledProcessError:
            return  # absent: helm creates it
        if phase != "Terminating":
            return
        time.sleep(2)
    raise SystemExit(f"[run] namespace {NAMESPACE} is still Terminating after {timeout:.0f}s")


def chart_values(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    node_ip = env["NODE_IP"]
    kafka: dict[str, Any] = {"bootstrapServers": env["KAFKA_BOOTSTRAP_SERVERS"]}
    if env.get("KAFKA_TOPIC"):
        kafka["topic"] = env["KAFKA_TOPIC"]
    return {
        "image": {"tag": "dev", "pullPolicy": "Never"},
        "operator": {"watchNamespaces": [NAMESPACE]},
        "pipeline": {
            "create": True,
            "name": PIPELINE,
            "kafka": kafka,
            "api": {"replicas": 1},
            "consumer": {"maxReplicas": 4},
            # The demo receiver listens on the node address, a private one.
            "alerts": {"intervalSeconds": 15, "webhookAllow": [node_ip]},
            "views": {"refreshSchedule": "*/5 * * * *"},
            # The children use the image as built here, never a pull.
            "extraSpec": {"imagePullPolicy": "Never"},
            "secrets": {
                "create": True,
                # The same servers as the host's, through the node address's relays.
                "databaseUrl": with_host(env["DATABASE_URL"], node_ip),
                "redisUrl": with_host(env["REDIS_URL"], node_ip),
                # The key make run signs its tokens with (the chart would make its own).
                "jwtSecret": env["ANALYTICS_JWT_SECRET"],
            },
        },
    }


def alert_rule_sample(hook_url: str) -> str:
    """The sample AlertRule, notifying this run's webhook receiver instead of hooks.example."""
    text = (ROOT / "crds" / "samples" / "alertrule.yaml").read_text()
    return text.replace("https://hooks.example/ops", hook_url)


def install(env: dict[str, str], args: argparse.Namespace) -> None:
    say("building the image (make image; log " + str(LOGS / "image.log") + ")")
    t0 = time.monotonic()
    with open(LOGS / "image.log", "ab") as log:
        built = subprocess.run(
            ["bash", str(ROOT / "stack" / "image.sh")],
            env={**env, "PYTHON": sys.executable},
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=1800,
        )
    if built.returncode:
        raise SystemExit(f"[run] make image failed (see {LOGS / 'image.log'})")
    say(f"image molam-analytics:dev ready in {time.monotonic() - t0:.0f}s")
    wait_namespace_usable(env)
    values = STATE / "run-values.json"
    values.write_text(json.dumps(chart_values(env, args), indent=2))
    values.chmod(0o600)
    # Helm installs a chart's crds/ only when they are absent and never upgrades them: apply
    # this checkout's, as the chart's README tells users to on upgrades. Server-side, taking
    # over fields that an earlier `kubectl apply` or helm install of another version set.
    kubectl(
        env, "apply", "--server-side", "--force-conflicts", "--field-manager=molam-make-run",
        "-f", str(CHART / "crds"),
    )  # fmt: skip
    say(f"helm upgrade --install {RELEASE} {CHART.relative_to(ROOT)} -n {NAMESPACE}")
    t0 = time.monotonic()
    helm(
        env,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--create-namespace",
        "--skip-crds",
        "-f",
        str(values),
        "--wait",
        "--timeout",
        "180s",
        timeout=240,
    )
    # The runbook's kubectl lines without -n act on the current context's namespace.
    kubectl(env, "config", "set-context", "--current", f"--namespace={NAMESPACE}")
    say(f"operator up in {time.monotonic() - t0:.0f}s; waiting for the pipeline's pods")
    try:
        kubectl(
            env,
            "wait",
            "-n",
            NAMESPACE,
            f"ap/{PIPELINE}",
            "--for=condition=Ready",
            "--timeout=240s",
            timeout=250,
        )
    except subprocess.CalledProcessError as exc:
        pods = kubectl(env, "get", "pods", "-n", NAMESPACE)
        raise SystemExit(
            f"[run] the pipeline did not become Ready:\n{exc.stderr}\n{pods}"
        ) from None
    say(f"pipeline {PIPELINE} Ready {time.monotonic() - t0:.0f}s after the install began")


def uninstall(env: dict[str, str]) -> None:
    """Delete the pipeline while its operator still runs, then uninstall the release.

    Every wait is bounded. Should the operator not release the pipeline in time (its finalizer
    kept), make run removes the finalizer itself, as a last resort, and says so.
    """
    say(f"deleting AnalyticsPipeline {PIPELINE} (the operator removes its children)")
    try:
        kubectl(
            env, "delete", "ap", PIPELINE, "-n", NAMESPACE, "--ignore-not-found",
            "--timeout=60s", timeout=70,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        say(f"the operator kept {PIPELINE}'s finalizer: make run removes it (last resort)")
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            kubectl(
                env, "patch", "ap", PIPELINE, "-n", NAMESPACE, "--type", "merge",
                "-p", '{"metadata":{"finalizers":null}}', timeout=30,
            )  # fmt: skip
    say(f"helm uninstall {RELEASE} -n {NAMESPACE}")
    home = STATE / "helm-home"
    try:
        subprocess.run(
            ["helm", "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "90s"],
            env={**env, "HOME": str(home)},
            capture_output=True,
            check=False,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        say("helm uninstall did not finish within 120s; `helm list -n molam` shows what is left")


def run_on_node(env: dict[str, str], args: argparse.Namespace, sup: Supervisor) -> dict[str, Any]:
    """The chart installed on the node; returns what the banner shows."""
    install(env, args)
    service = f"{PIPELINE}-api"
    pf = PortForward(sup, env, args.api_port, service)
    pf.start()
    base = f"http://127.0.0.1:{args.api_port}"
    wait_http(f"{base}/health", 90, sup, tick=pf.tick, ok_only=True)
    sup.tick = pf.tick  # type: ignore[attr-defined]
    hook_url = start_webhook_receiver(env["NODE_IP"])  # pods reach the host on the node address
    admin = mint_token(env["ANALYTICS_JWT_SECRET"], "admin", "make-run")
    put_demo_rule(base, admin, hook_url)
    kubectl(env, "apply", "-n", NAMESPACE, "-f", "-", stdin=alert_rule_sample(hook_url))
    sup.start("simulate", live_simulate_argv(args))
    return {
        "admin": admin,
        "lines": [
            f"  Watch       kubectl get ap,deploy,pods -n {NAMESPACE} -w   (lag scaling: the"
            " consumer Deployment grows with the lag)",
            "  More lag    molam-analytics simulate --rate 0 --count 60000 --seed 1 --write-source"
            ' --run-id "b$(date +%s)"   (a burst from the host, after . .stack/run.env)',
            f"  Logs        kubectl logs -f deployment/analytics-consumer -n {NAMESPACE}",
            f"  Helm        release {RELEASE} in namespace {NAMESPACE}"
            " (Ctrl-C deletes the pipeline and uninstalls it)",
        ],
    }


# --- main ----------------------------------------------------------------------------------


def no_node_reason(use_kube: bool) -> str:
    if not use_kube:
        return "no Kubernetes control plane (STACK_KUBE=0, or kube.sh has not built it yet)"
    if os.environ.get("STACK_NODE") == "0":
        return "STACK_NODE=0"
    if os.geteuid() != 0:
        return "a node needs root (Docker, the kubelet and kube-proxy)"
    return "Docker could not be started (see `make stack`'s output)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("API_PORT", 8082)))
    parser.add_argument(
        "--rate", type=float, default=None,
        help="live events/s, constant (default: the history's rate, following its rhythm)",
    )  # fmt: skip
    parser.add_argument("--merchants", type=int, default=25)
    parser.add_argument("--history-days", type=float, default=HISTORY_DAYS)
    parser.add_argument("--anomaly-seconds", type=float, default=300)
    parser.add_argument("--ready-file", type=Path, help="write URLs and tokens here when ready")
    parser.add_argument(
        "--database",
        default=os.environ.get("MOLAM_APP_DB", DEMO_DATABASE),
        help="database created on the stack's PostgreSQL for the system",
    )
    parser.add_argument(
        "--processes", action="store_true", help="local processes even where a node runs"
    )
    parser.add_argument("--consumer-metrics-port", type=int, default=9102)
    parser.add_argument("--alerts-metrics-port", type=int, default=9103)
    parser.add_argument("--operator-metrics-port", type=int, default=9104)
    parser.add_argument("--operator-health-port", type=int, default=8080)
    args = parser.parse_args()
    started_at = time.monotonic()

    STATE.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    fresh_stack = not (STATE / "started.json").exists()
    use_kube = kube_available()
    subprocess.run(
        [sys.executable, str(ROOT / "stack" / "stack.py"), "up", *(["--kube"] if use_kube else [])],
        check=True,
    )
    # A node is this stack's only when its env file says so, not a NODE_IP inherited from the
    # environment of another stack (the runbook test runs one of its own beside .stack).
    inherited = {k: v for k, v in os.environ.items() if k != "NODE_IP"}
    env = {**inherited, **load_env_file(STATE / "env")}
    on_node = bool(env.get("NODE_IP")) and not args.processes
    if not on_node:
        why = "--processes" if args.processes else no_node_reason(use_kube)
        say(
            f"no node ({why}): running the workloads as local processes. For the Kubernetes"
            " install (helm, pods): run `make stack` as root on a machine where apt can"
            " install Docker, then `make run` again."
        )
    secret_file = STATE / "jwt-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    env.setdefault("ANALYTICS_JWT_SECRET", secret_file.read_text().strip())
    env["API_PORT"] = str(args.api_port)

    subprocess.run(
        ["psql", env["DATABASE_URL"], "-qc", f'CREATE DATABASE "{args.database}"'],
        env=env,
        capture_output=True,
        check=False,
    )  # fails harmlessly when it exists
    env["DATABASE_URL"] = with_database(env["DATABASE_URL"], args.database)
    if urlparse(env["REDIS_URL"]).path in ("", "/", "/0"):
        env["REDIS_URL"] = urlunparse(urlparse(env["REDIS_URL"])._replace(path=f"/{DEMO_REDIS_DB}"))
    cli = str(BIN / "molam-analytics")
    migrated = subprocess.run([cli, "migrate"], env=env, capture_output=True, text=True)
    if migrated.returncode:
        raise SystemExit(f"[run] molam-analytics migrate failed:\n{migrated.stderr}")
    seed_history(env, args.history_days, args.merchants, HISTORY_PER_HOUR)
    forget_sira_pointer(env)
    # What the banner's commands need: make run's own database, not the stack's.
    exported = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "KUBECONFIG")
    (STATE / "run.env").write_text(
        "".join(f'export {k}="{env[k]}"\n' for k in exported if k in env)
        + f'export PATH="{BIN}:{KUBE_BIN}:$PATH"\n'
    )

    sup = Supervisor(env)
    installed = False

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Also SIGINT: a shell that starts make run in the background leaves it ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if on_node:
            installed = True
            shown = run_on_node(env, args, sup)
        else:
            shown = run_processes(env, args, sup, use_kube)
        base = f"http://127.0.0.1:{args.api_port}"
        admin = shown["admin"]
        ready = {
            "mode": "node" if on_node else "processes",
            "dashboard": f"{base}/#token={admin}",
            "api": base,
            "admin_token": admin,
            "database_url": env["DATABASE_URL"],
            "webhook_log": str(LOGS / "webhook.log"),
            "kubeconfig": env.get("KUBECONFIG"),
            "namespace": NAMESPACE,
            "env": {
                k: env[k]
                for k in (
                    "DATABASE_URL",
                    "REDIS_URL",
                    "KAFKA_BOOTSTRAP_SERVERS",
                    "KAFKA_TOPIC",
                    "ANALYTICS_JWT_SECRET",
                    "PATH",
                    "KUBECONFIG",
                )
                if k in env
            },
            "logs": str(LOGS),
            "seconds_to_ready": round(time.monotonic() - started_at, 1),
        }
        if args.ready_file:
            args.ready_file.write_text(json.dumps(ready))
        print(
            "\n"
            f"  Dashboard   {ready['dashboard']}\n"
            f"  API docs    {base}/docs\n"
            f"  Health      curl {base}/health\n"
            f'  Token       curl -H "Authorization: Bearer {admin}" {base}/v1/kpis\n'
            + "".join(line + "\n" for line in shown["lines"])
            + f"  Webhooks    tail -f {ready['webhook_log']}\n"
            f"  Env         . {STATE / 'run.env'}  (psql $DATABASE_URL, molam-analytics lag)\n"
            f"\nUp in {ready['seconds_to_ready']:.0f}s. Ctrl-C stops everything"
            + (" and uninstalls the release.\n" if on_node else ".\n"),
            flush=True,
        )
        tick = getattr(sup, "tick", None)
        while True:
            failed = sup.check()
            if failed:
                say(failed)
                return 1
            if tick is not None:
                tick()
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown
        sup.stop()
        if installed:
            uninstall(env)
        if fresh_stack:
            subprocess.run([sys.executable, str(ROOT / "stack" / "stack.py"), "down"], check=False)


if __name__ == "__main__":
    sys.exit(main())
