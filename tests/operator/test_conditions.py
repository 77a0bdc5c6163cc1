"""Pure helpers of the status: conditions, and which child fields a reconcile leaves alone."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from molam_operator import manifests
from molam_operator.conditions import get_condition, set_condition
from molam_operator.drift import drifted
from molam_operator.pipeline import _strip_for_patch
from molam_operator.spec import parse_spec

SAMPLE = Path(__file__).resolve().parents[2] / "crds" / "samples" / "analyticspipeline.yaml"


def test_set_condition_moves_the_transition_time_only_on_change() -> None:
    c = set_condition([], "Ready", True, "ChildrenReady", "ok", generation=1, now="t1")
    assert c == [
        {"type": "Ready", "status": "True", "reason": "ChildrenReady", "message": "ok",
         "lastTransitionTime": "t1", "observedGeneration": 1}
    ]  # fmt: skip
    same = set_condition(c, "Ready", True, "ChildrenReady", "still ok", generation=2, now="t2")
    assert get_condition(same, "Ready") == {**c[0], "message": "still ok", "observedGeneration": 2}
    flipped = set_condition(same, "Ready", False, "ChildrenFailed", "boom", now="t3")
    assert get_condition(flipped, "Ready")["lastTransitionTime"] == "t3"  # type: ignore[index]
    other = set_condition(flipped, "LagProbe", None, "Unknown", "?", now="t4")
    assert [x["type"] for x in other] == ["Ready", "LagProbe"]
    assert other[1]["status"] == "Unknown"
    assert c[0]["message"] == "ok"  # inputs untouched


def _deployments() -> dict[str, dict[str, object]]:
    spec = yaml.safe_load(SAMPLE.read_text())["spec"]
    cfg = parse_spec(spec)
    kids = manifests.build_children("analytics", cfg, cron_job_api_version="batch/v1")
    return {c["metadata"]["name"]: c for c in kids if c["kind"] == "Deployment"}


def test_consumer_replicas_belong_to_the_scaler() -> None:
    consumer = _deployments()["analytics-consumer"]
    live = copy.deepcopy(consumer)
    live["spec"]["replicas"] = 7  # type: ignore[index]
    patch = _strip_for_patch(consumer, live)  # type: ignore[arg-type]
    assert "replicas" not in patch["spec"]
    assert not drifted(patch, live)


def test_api_replicas_apply_only_when_the_spec_value_changes() -> None:
    api = _deployments()["analytics-api"]
    live = copy.deepcopy(api)
    live["spec"]["replicas"] = 4  # type: ignore[index]  # kubectl scale (runbook)
    assert "replicas" not in _strip_for_patch(api, live)["spec"]  # type: ignore[arg-type]
    live["metadata"]["annotations"][manifests.API_REPLICAS_ANNOTATION] = "3"  # type: ignore[index]
    assert _strip_for_patch(api, live)["spec"]["replicas"] == 2  # type: ignore[arg-type]
