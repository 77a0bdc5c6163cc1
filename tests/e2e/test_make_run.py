"""``make run`` on the stack's node, twice: the chart installed the way users install it.

Drives ``stack/run.py`` (the code path of ``make run``) on the stack itself (``.stack``: its
control plane, node, port 8082 and namespace ``molam``), into a database of its own. Each run
must come up with every pod Ready, answer ``/health`` on 127.0.0.1:8082 and the API with the
token it prints, show two weeks of history with a daily rhythm, ingest its live traffic through
the consumer pod, and leave nothing installed after Ctrl-C. The second run proves that a rerun
into the same database works (it used to die on a duplicate transaction id).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.database import drop_database
from helpers.polling import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:8082"
NAMESPACE = "molam"
KUBECTL = Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache/molam-analytics") / (
    "k8s/bin/kubectl"
)


def kubectl_json(*args: str) -> Any:
    out = subprocess.run(
        [str(KUBECTL), *args, "-o", "json"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def helm_releases(home: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["helm", "list", "-n", NAMESPACE, "-o", "json"],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout or "[]"))


class MakeRun:
    """One ``stack/run.py`` process and what it printed."""

    def __init__(self, database: str, out: Path) -> None:
        self.ready_file = out.with_suffix(".ready.json")
        self.ready_file.unlink(missing_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "stack" / "run.py"),
                "--database",
                database,
                "--ready-file",
                str(self.ready_file),
            ],
            env={k: v for k, v in os.environ.items() if k != "MOLAM_STACK_STATE"},
            stdout=open(out, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("make run did not come up:\n" + self.out.read_text())
            time.sleep(1)
        return dict(json.loads(self.ready_file.read_text()))

    def interrupt(self, timeout: float = 240) -> int:
        """Ctrl-C, as a user would; the teardown (pipeline, release) must end in time."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(
                f"make run's teardown took over {timeout}s:\n" + self.out.read_text()
            ) from None


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"molam_run_{uuid.uuid4().hex[:8]}"
    yield name
    drop_database(os.environ["DATABASE_URL"], name)


def api(path: str, token: str, **params: Any) -> Any:
    r = httpx.get(
        f"{BASE}{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def assert_pods_ready() -> None:
    deployments = kubectl_json("get", "deployments", "-n", NAMESPACE)["items"]
    # The operator's Deployment and the pipeline's api, consumer and alerts.
    assert len(deployments) >= 4, [d["metadata"]["name"] for d in deployments]
    for d in deployments:
        want = d["spec"]["replicas"]
        assert want >= 1 and d["status"].get("availableReplicas") == want, d["status"]
    pods = kubectl_json("get", "pods", "-n", NAMESPACE)["items"]
    running = [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and p["status"]["phase"] != "Succeeded"
    ]
    assert len(running) >= 4
    for p in running:
        ready = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        assert ready.get("Ready") == "True", (p["metadata"]["name"], p["status"])
        # Each migrated the database in its init container before starting (the operator's
        # pod has none).
        for init in p["status"].get("initContainerStatuses", []):
            assert init["state"].get("terminated", {}).get("exitCode") == 0, init


def assert_two_weeks_with_a_rhythm(token: str) -> None:
    now = datetime.now(UTC)
    days = api(
        "/v1/timeseries",
        token,
        granularity="day",
        **{"from": (now - timedelta(days=14)).isoformat(), "to": now.isoformat()},
    )["points"]
    with_data = [p for p in days if p["tx_count"] > 0]
    assert len(with_data) >= 14, days  # 15 calendar days touched, the first one partly
    hours = api(
        "/v1/timeseries",
        token,
        granularity="hour",
        **{"from": (now - timedelta(days=7)).isoformat(), "to": now.isoformat()},
    )["points"][1:-1]  # whole hours only
    counts = sorted(p["tx_count"] for p in hours)
    quiet, busy = counts[len(counts) // 10], counts[-len(counts) // 10]
    assert quiet > 0 and busy > 4 * quiet, (quiet, busy)  # nights quiet, days busy


def live_ingested(database_url: str) -> int:
    out = subprocess.run(
        [
            "psql",
            database_url,
            "-Atc",
            "SELECT count(*) FROM ingested_transactions WHERE source = 'stream'"
            " AND txn_id LIKE 'SIM-%'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def check_run(ready: dict[str, Any], previous_live: int) -> int:
    assert ready["mode"] == "node", ready
    health = httpx.get(f"{BASE}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    token = ready["admin_token"]
    assert httpx.get(f"{BASE}/v1/kpis", timeout=10).status_code == 401
    assert api("/v1/kpis", token)
    assert_pods_ready()
    assert kubectl_json("get", "cronjob", "analytics-refresh-views", "-n", NAMESPACE)
    assert_two_weeks_with_a_rhythm(token)
    # simulate's live traffic goes through the broker and the consumer pod into the database.
    return int(
        eventually(
            lambda: (n := live_ingested(ready["database_url"])) > previous_live and n,
            timeout=120,
            every=3,
        )
    )


def test_make_run_twice_on_the_node(database: str, tmp_path: Path) -> None:
    helm_home = tmp_path / "helm-home"
    live = 0
    for attempt in (1, 2):
        run = MakeRun(database, tmp_path / f"run{attempt}.out")
        try:
            ready = run.wait_ready(timeout=600)
            live = check_run(ready, live)
        finally:
            code = run.interrupt()
        output = run.out.read_text()
        assert code == 0, output
        assert "Traceback" not in output, output
        if attempt == 2:
            # The rerun seeded only the time since the first one, not two more weeks.
            seeded = int(output.split("[run] history: ")[1].split()[0])
            assert seeded < 5000, output
        assert helm_releases(helm_home) == [], output
        assert kubectl_json("get", "ap", "-n", NAMESPACE)["items"] == [], output
        with pytest.raises(httpx.ConnectError):  # the port-forward is gone too
            httpx.get(f"{BASE}/health", timeout=5)
