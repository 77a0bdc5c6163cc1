"""The chart's crds/ is an exact copy of the top-level crds/ (the source of truth)."""

from __future__ import annotations

import subprocess

from .conftest import CHART, ROOT


def test_chart_crds_identical_to_top_level():
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "no CRDs in crds/"
    assert set(chart) == set(top), "run charts/sync-crds.sh"
    for name, data in top.items():
        stale = f"charts/molam-analytics/crds/{name} is stale: run charts/sync-crds.sh"
        assert chart[name] == data, stale


def test_sync_script_check_mode_agrees():
    proc = subprocess.run(
        ["bash", str(ROOT / "charts" / "sync-crds.sh"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
