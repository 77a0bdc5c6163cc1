"""``make run``: the whole system on one machine, from a fresh clone.

Starts (or reuses) the local stack, creates the ``molam`` database and migrates it, then runs
the consumer, the API with its dashboard, the alerts evaluator, a local webhook receiver, and
``simulate`` feeding realistic traffic with an injected anomaly and an alert rule that fires.
When the Kubernetes control plane is available (built and cached by ``stack/kube.sh``, or
STACK_KUBE=1 to build it), it also runs the operator reconciling the sample AnalyticsPipeline
and AlertRule. Prints where to look; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("MOLAM_STACK_STATE", ROOT / ".stack"))
LOGS = STATE / "logs"
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("MOLAM_CACHE_DIR", Path.home() / ".cache" / "molam-analytics"))
KUBE_BIN = CACHE / "k8s" / "bin"
NAMESPACE = "molam"


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
    from urllib.parse import urlparse, urlunparse

    return urlunparse(urlparse(dsn)._replace(path="/" + name))


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
            if proc.poll() is not None and name != "simulate-burst":
                return f"{name} exited with {proc.returncode} (see {LOGS / (name + '.log')})"
        return None

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


def start_webhook_receiver() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WebhookReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/alerts"


def http_json(method: str, url: str, token: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def wait_http(url: str, timeout: float, sup: Supervisor) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = sup.check()
        if failed:
            raise SystemExit(f"[run] {failed}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (503 while a dependency warms up is fine here)
        except OSError:
            time.sleep(0.3)
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


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [str(KUBE_BIN / "kubectl"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


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
        env, "patch", "ap", "analytics", "-n", NAMESPACE, "--type", "merge", "-p", json.dumps(patch)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("API_PORT", 8082)))
    parser.add_argument("--rate", type=float, default=40.0, help="simulated events per second")
    parser.add_argument("--merchants", type=int, default=25)
    parser.add_argument("--ready-file", type=Path, help="write URLs and tokens here when ready")
    parser.add_argument(
        "--database",
        default=os.environ.get("MOLAM_APP_DB", "molam"),
        help="database created on the stack's PostgreSQL for the system",
    )
    parser.add_argument("--consumer-metrics-port", type=int, default=9102)
    parser.add_argument("--alerts-metrics-port", type=int, default=9103)
    parser.add_argument("--operator-metrics-port", type=int, default=9104)
    parser.add_argument("--operator-health-port", type=int, default=8080)
    args = parser.parse_args()

    STATE.mkdir(parents=True, exist_ok=True)
    fresh_stack = not (STATE / "started.json").exists()
    use_kube = kube_available()
    subprocess.run(
        [sys.executable, str(ROOT / "stack" / "stack.py"), "up", *(["--kube"] if use_kube else [])],
        check=True,
    )
    env = {**os.environ, **load_env_file(STATE / "env")}
    secret_file = STATE / "jwt-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
    env.setdefault("ANALYTICS_JWT_SECRET", secret_file.read_text().strip())
    env["API_PORT"] = str(args.api_port)

    subprocess.run(
        ["psql", env["DATABASE_URL"], "-qc", f'CREATE DATABASE "{args.database}"'],
        env=env,
        capture_output=True,
        check=False,
    )  # fails harmlessly when it exists
    env["DATABASE_URL"] = with_database(env["DATABASE_URL"], args.database)
    cli = str(BIN / "molam-analytics")
    subprocess.run([cli, "migrate"], env=env, check=True)

    sup = Supervisor(env)
    hook_url = start_webhook_receiver()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        # SIRA judges closed buckets against a learnt baseline: for a demo that shows an
        # anomaly within minutes, 1-minute buckets and the last 20 minutes of traffic first.
        sira_demo = {
            "SIRA_BUCKET_MINUTES": "1",
            "SIRA_GRACE_SECONDS": "10",
            "SIRA_MIN_HISTORY": "10",
        }
        history_minutes = 20
        subprocess.run(
            [
                cli,
                "simulate",
                "--days-back",
                str(history_minutes / 1440),
                "--count",
                str(int(args.rate * 60 * history_minutes)),
                "--rate",
                "0",
                "--merchants",
                str(args.merchants),
                "--write-source",
                "--seed",
                "1",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
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
        sup.start(
            "simulate",
            [
                cli,
                "simulate",
                "--rate",
                str(args.rate),
                "--merchants",
                str(args.merchants),
                "--write-source",
                "--anomaly",
                "--anomaly-after",
                "60",
                "--anomaly-seconds",
                "120",
                "--anomaly-factor",
                "10",
            ],
        )
        base = f"http://127.0.0.1:{args.api_port}"
        wait_http(f"{base}/health", 60, sup)
        admin = mint_token(env["ANALYTICS_JWT_SECRET"], "admin", "make-run")
        rule = {
            "name": "demo-failure-rate",
            "spec": {
                "metric": "failure_rate",
                "comparison": "gt",
                "threshold": 0.05,
                "windowMinutes": 5,
                "severity": "warning",
                "notify": {"webhooks": [{"url": hook_url}]},
            },
        }
        with contextlib.suppress(urllib.error.HTTPError):  # 409: kept from an earlier run
            http_json("POST", f"{base}/v1/alert-rules", admin, rule)
        if use_kube:
            setup_kube(env, sup, args)
        ready = {
            "dashboard": f"{base}/?token={admin}",
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
        }
        if args.ready_file:
            args.ready_file.write_text(json.dumps(ready))
        print(
            "\n"
            f"  Dashboard   {ready['dashboard']}\n"
            f"  API docs    {base}/docs\n"
            f"  Admin token {admin}\n"
            f"  Metrics     {base}/metrics  (consumer :{args.consumer_metrics_port},"
            f" alerts :{args.alerts_metrics_port})\n"
            f"  Webhooks    tail -f {ready['webhook_log']}\n"
            f"  Logs        {LOGS}/\n"
            f"  Env         . {STATE / 'env'}  (psql $DATABASE_URL, molam-analytics lag)\n"
            + (
                f"  Kubernetes  KUBECONFIG={env['KUBECONFIG']} kubectl get ap,ar,deploy,cronjob"
                f" -n {NAMESPACE}\n"
                if use_kube
                else "  Kubernetes  not started (STACK_KUBE=1 builds the local control plane)\n"
            )
            + "\nCtrl-C stops everything.\n",
            flush=True,
        )
        while True:
            failed = sup.check()
            if failed:
                say(failed)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        sup.stop()
        if fresh_stack:
            subprocess.run([sys.executable, str(ROOT / "stack" / "stack.py"), "down"], check=False)


if __name__ == "__main__":
    sys.exit(main())
