"""The chart's PrometheusRule through Prometheus's own tool: ``promtool check rules`` and the
unit tests of prometheus-rules-test.yaml (each alert fires where it should and only there)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Renderer, find

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "prometheus-rules-test.yaml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run stack/system-deps.sh (Debian package prometheus)")
    return path


def write_rules(render: Renderer, folder: Path, rules: dict[str, Any] | None = None) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file (what the Operator hands over)."""
    values: dict[str, Any] = {"prometheusRule": {"enabled": True}}
    if rules:
        values["prometheusRule"]["rules"] = rules
    spec = find(render(values), "PrometheusRule")["spec"]
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules(render: Renderer, tmp_path: Path) -> None:
    write_rules(render, tmp_path)
    proc = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout, proc.stdout


def test_each_alert_fires_and_stays_quiet_as_tested(render: Renderer, tmp_path: Path) -> None:
    write_rules(render, tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = run_promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_unit_tests_notice_a_changed_threshold(render: Renderer, tmp_path: Path) -> None:
    # 7000 messages: the "behind" namespace (6000) no longer fires, which the tests expect.
    write_rules(render, tmp_path, {"consumerLag": {"threshold": 7000}})
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = run_promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "AnalyticsConsumerLagHigh" in proc.stdout + proc.stderr
