"""``stack/run.py``'s pure parts: the history plan, the chart values it installs with."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("molam_run_under_test", ROOT / "stack" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run()


def test_history_plan_covers_two_weeks_with_the_daily_rhythm() -> None:
    end = datetime(2026, 12, 7, 6, 48, 30, tzinfo=UTC)
    start = end - timedelta(days=14)
    weights = [0.5, 0.3, 0.2]
    plan = run.history_plan(start, end, weights, 1500, random.Random(3))
    assert all(start <= t0 and t0 + timedelta(seconds=span) <= end for _, t0, span, _ in plan)
    assert {m for m, *_ in plan} == {1, 2, 3}
    total = sum(n for *_, n in plan)
    assert total == pytest.approx(1500 * 24 * 14, rel=0.05)
    per_hour: Counter[int] = Counter()
    for _, t0, _, n in plan:
        per_hour[t0.hour] += n
    assert per_hour[19] > 10 * per_hour[3]  # the evening peak against the night
    per_merchant: Counter[int] = Counter()
    for m, _, _, n in plan:
        per_merchant[m] += n
    assert per_merchant[1] / total == pytest.approx(0.5, abs=0.02)


def test_history_plan_of_a_short_gap_is_small() -> None:
    end = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    plan = run.history_plan(end - timedelta(minutes=10), end, [1.0], 1500, random.Random(1))
    assert sum(n for *_, n in plan) < 1500 * 2 / 6


def test_with_host_keeps_credentials_port_and_database() -> None:
    url = "postgresql://user:pw@127.0.0.1:5432/molam_demo"
    assert run.with_host(url, "10.250.0.1") == "postgresql://user:pw@10.250.0.1:5432/molam_demo"
    assert run.with_host("redis://127.0.0.1/1", "10.250.0.1") == "redis://10.250.0.1/1"


def test_live_simulate_follows_the_history() -> None:
    args = run.argparse.Namespace(rate=None, merchants=25, anomaly_seconds=300)
    argv = run.live_simulate_argv(args)
    assert "--daily-rhythm" in argv
    assert float(argv[argv.index("--rate") + 1]) == pytest.approx(
        run.HISTORY_PER_HOUR / 3600, rel=1e-3
    )
    assert argv[argv.index("--seed") + 1] == str(run.DEMO_SEED)
    assert "--run-id" in argv  # a fresh one: a rerun never repeats a transaction id


def test_chart_values_pass_the_schema_and_render_the_pipeline(tmp_path: Path) -> None:
    env = {
        "NODE_IP": "10.250.0.1",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/molam_demo",
        "REDIS_URL": "redis://127.0.0.1:6379/1",
        "KAFKA_BOOTSTRAP_SERVERS": "10.250.0.1:59092",
        "ANALYTICS_JWT_SECRET": "x" * 43,
    }
    values = tmp_path / "values.json"
    values.write_text(json.dumps(run.chart_values(env, None)))
    out = subprocess.run(
        ["helm", "template", "molam", str(run.CHART), "-n", "molam", "-f", str(values)],
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(out) if d]
    ap = next(d for d in docs if d["kind"] == "AnalyticsPipeline")
    assert ap["metadata"]["namespace"] == "molam"
    assert ap["spec"]["imagePullPolicy"] == "Never"
    assert ap["spec"]["image"].endswith(":dev")
    assert ap["spec"]["kafka"]["bootstrapServers"] == "10.250.0.1:59092"
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert secrets["analytics-db"]["stringData"]["url"] == (
        "postgresql://postgres@10.250.0.1:5432/molam_demo"
    )
    assert secrets["analytics-jwt"]["stringData"]["secret"] == "x" * 43
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"]
    )
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "Never"
    assert "--namespace=molam" in container["args"]
