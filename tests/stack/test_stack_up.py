"""`stack.py up` stops what it started when a later step fails, and records nothing of it.

Runs the module's own `up` with real background processes (`sleep`) standing in for the
embedded services, and a control plane whose start fails; no real service is started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers.stack import load_stack


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_stack()
    monkeypatch.setattr(module, "STATE", tmp_path)
    monkeypatch.setattr(module, "STARTED", tmp_path / "started.json")
    for probe in ("pg_reachable", "redis_reachable", "kafka_reachable"):
        monkeypatch.setattr(module, probe, lambda _url: False)
    return module


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not reaped yet is gone for our purpose.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _sleeper(stack: ModuleType, name: str) -> tuple[str, dict[str, object]]:
    pid = stack.spawn(["sleep", "300"], stack.STATE / f"{name}.log", lambda: True, name)
    return f"{name}://127.0.0.1", {"kind": name, "pid": pid}


def test_a_failing_step_stops_the_services_this_run_started(
    stack: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL was started by an earlier run (recorded and reachable): kept as it is.
    earlier = {"postgres": {"kind": "embedded-postgres", "pgdata": "/nowhere", "url": "pg://x"}}
    stack.STARTED.write_text(json.dumps(earlier))
    monkeypatch.setattr(stack, "pg_reachable", lambda url: url == "pg://x")
    stopped_postgres: list[object] = []
    monkeypatch.setattr(stack, "stop_postgres", stopped_postgres.append)
    pids: list[int] = []

    def start(name: str):  # type: ignore[no-untyped-def]
        def starter(*_host: str) -> tuple[str, dict[str, object]]:
            url, info = _sleeper(stack, name)
            pids.append(int(str(info["pid"])))
            return url, info

        return starter

    monkeypatch.setenv("STACK_NODE", "0")  # the node's start (Docker, kubelet) is not under test
    monkeypatch.setattr(stack, "start_redis", start("redis"))
    monkeypatch.setattr(stack, "start_kafka", start("kafka"))
    kube_calls: list[list[str]] = []

    def fake_run(argv: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        kube_calls.append(argv)
        return subprocess.CompletedProcess(argv, 1 if argv[2] == "up" else 0, "", "etcd died\n")

    monkeypatch.setattr(stack.subprocess, "run", fake_run)

    with pytest.raises(subprocess.CalledProcessError):
        stack.up(with_kube=True)

    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)
    assert [argv[2] for argv in kube_calls] == ["up", "down"]  # the half-started plane too
    assert stopped_postgres == []  # not this run's
    assert json.loads(stack.STARTED.read_text()) == earlier
    assert not (stack.STATE / "env").exists()


def test_a_service_that_never_comes_up_is_not_left_running(stack: ModuleType) -> None:
    marker = f"molam-stack-test-{os.getpid()}"
    with pytest.raises(SystemExit, match="never-ready did not come up"):
        stack.spawn(
            [sys.executable, "-c", "import time; time.sleep(300)", marker],
            stack.STATE / "never.log",
            lambda: False,
            "never-ready",
            timeout=0.3,
        )
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert marker not in ps.stdout


def test_a_port_left_in_time_wait_is_not_chosen(stack: ModuleType) -> None:
    # A server's side of a connection it closed first lingers in TIME_WAIT: nothing listens on
    # the port any more, yet binding it without SO_REUSEADDR fails (as a just-stopped broker's
    # port does for the next one).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its side goes to TIME_WAIT
        client.recv(1)
        client.close()
    assert not stack.tcp_open("127.0.0.1", port)  # nothing listens
    chosen = stack.free_port(port)
    assert chosen != port
    with socket.socket() as s:
        s.bind(("127.0.0.1", chosen))  # and the one chosen can be bound


def test_a_free_preferred_port_is_kept(stack: ModuleType) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert stack.free_port(port) == port
