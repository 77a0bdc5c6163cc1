"""Ready as ``kubectl rollout status`` judges each child Deployment (pure; the cluster side is in
test_pipeline.py)."""

from __future__ import annotations

from typing import Any

import pytest

from molam_operator import rollout
from molam_operator.manifests import build_children
from molam_operator.spec import parse_spec

SPEC: dict[str, Any] = {
    "image": "molam-analytics:test",
    "kafka": {"bootstrapServers": "kafka:9092"},
    "database": {"secretRef": {"name": "db"}},
    "redis": {"secretRef": {"name": "redis"}},
}


def deployments(pipeline: str = "analytics") -> list[dict[str, Any]]:
    children = build_children(pipeline, parse_spec(SPEC), cron_job_api_version="batch/v1")
    return [c for c in children if c["kind"] == "Deployment"]


def with_status(dep: dict[str, Any], generation: int = 1, **status: Any) -> dict[str, Any]:
    out = {**dep, "metadata": {**dep["metadata"], "generation": generation}}
    out["status"] = {"observedGeneration": generation, **status}
    return out


def available(dep: dict[str, Any]) -> dict[str, Any]:
    n = dep["spec"]["replicas"]
    return with_status(dep, replicas=n, updatedReplicas=n, readyReplicas=n, availableReplicas=n)


@pytest.mark.parametrize(
    ("status", "generation", "done", "message"),
    [
        ({}, 2, False, "has not seen the latest spec"),
        ({"replicas": 2, "updatedReplicas": 1}, 1, False, "1 of 2 new replicas have been updated"),
        ({"replicas": 3, "updatedReplicas": 2}, 1, False, "1 old replicas are pending termination"),
        (
            {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 0},
            1,
            False,
            "0 of 2 updated replicas are available",
        ),
        ({"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}, 1, True, "2 of 2"),
    ],
)
def test_rollout_follows_kubectl_rollout_status(
    status: dict[str, Any], generation: int, done: bool, message: str
) -> None:
    api = deployments()[0]
    dep = with_status(api, generation=1, **status)
    dep["metadata"]["generation"] = generation
    state = rollout.rollout(dep)
    assert state.done is done and message in state.message and not state.failed


def test_a_passed_progress_deadline_is_a_failure() -> None:
    cond = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "analytics-api-1" has timed out progressing.'}  # fmt: skip
    dep = with_status(deployments()[0], replicas=2, updatedReplicas=2, conditions=[cond])
    state = rollout.rollout(dep)
    assert not state.done and state.failed and "progress deadline" in state.message
    ready = rollout.availability("analytics", [dep, *map(available, deployments()[1:])])
    assert (ready.ok, ready.reason) == (False, "ProgressDeadlineExceeded")


def test_ready_names_each_child_that_waits() -> None:
    api, consumer, alerts = deployments()
    pending = with_status(api, replicas=2, updatedReplicas=2, availableReplicas=0)
    ready = rollout.availability("analytics", [pending, available(consumer)])
    assert (ready.ok, ready.reason) == (False, "PodsNotAvailable")
    assert ready.message == (
        "waiting for analytics-api: 0 of 2 updated replicas are available; "
        "analytics-alerts: not created yet"
    )
    ready = rollout.availability("analytics", [available(d) for d in (api, consumer, alerts)])
    assert (ready.ok, ready.reason) == (True, "ChildrenAvailable")


def test_a_consumer_paused_at_zero_counts_as_available() -> None:
    api, consumer, alerts = deployments()
    consumer["spec"]["replicas"] = 0
    paused = with_status(consumer)  # the controller reports no replica fields at 0
    assert rollout.rollout(paused).done
    assert rollout.availability("analytics", [available(api), paused, available(alerts)]).ok


def test_children_are_matched_by_their_component_label_not_their_name() -> None:
    # Pipeline "consumer-x": its API Deployment is consumer-x-api, whose name holds "consumer".
    api, consumer, alerts = deployments("consumer-x")
    waiting_api = with_status(api, replicas=2, updatedReplicas=2, availableReplicas=0)
    ready = rollout.availability(
        "consumer-x", [available(consumer), waiting_api, available(alerts)]
    )
    assert not ready.ok
    assert ready.message == "waiting for consumer-x-api: 0 of 2 updated replicas are available"
