"""Drift detection: a live child that lacks or changed what its manifest sets, and nothing else."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from helpers.samples import PIPELINE, sample_spec

from molam_operator.drift import drifted
from molam_operator.manifests import build_children
from molam_operator.spec import parse_spec


def api_deployment() -> dict[str, Any]:
    """The sample pipeline's API Deployment, as the builders make it."""
    spec = sample_spec(PIPELINE)
    kids = build_children("analytics", parse_spec(spec), cron_job_api_version="batch/v1")
    wanted = ("Deployment", "analytics-api")
    return next(c for c in kids if (c["kind"], c["metadata"]["name"]) == wanted)


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_drift_ignores_server_defaults_and_status() -> None:
    desired = api_deployment()
    live = copy.deepcopy(desired)
    live["spec"]["progressDeadlineSeconds"] = 600
    live["status"] = {"replicas": 2}
    container(live)["terminationMessagePath"] = "/dev/termination-log"
    assert not drifted(desired, live)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update(image="evil:1"),
        lambda c: c["env"][0].update(valueFrom={"secretKeyRef": {"name": "x", "key": "y"}}),
        lambda c: c["env"].pop(),
        lambda c: c["securityContext"].update(readOnlyRootFilesystem=False),
        lambda c: c.update(args=["consume"]),
    ],
)
def test_drift_detects_hand_edits(edit: Any) -> None:
    desired = api_deployment()
    live = copy.deepcopy(desired)
    edit(container(live))
    assert drifted(desired, live)
