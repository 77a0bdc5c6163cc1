"""Whether a pipeline's pods are available: each child Deployment judged as ``kubectl rollout
status`` judges it (pure functions of the Deployments' spec and status, no I/O).

A Deployment is rolled out when its controller has seen its latest spec
(``status.observedGeneration >= metadata.generation``), every desired replica runs the newest
template (``updatedReplicas``), no old replica is left, and every updated replica is available.
A consumer scaled to 0 (paused) is rolled out: 0 of 0 replicas are available.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from molam_operator.manifests import COMPONENTS, child_name, component_of

# The Progressing condition's reason once spec.progressDeadlineSeconds passed without progress.
DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class Rollout:
    """One Deployment's state: ``done`` when its pods are available; ``failed`` when its
    controller gave up waiting (the progress deadline passed); ``message`` says why not."""

    done: bool
    message: str
    failed: bool = False


@dataclass(frozen=True)
class Availability:
    """The Ready condition the children's rollouts add up to."""

    ok: bool
    reason: str
    message: str


READY_REASON = "ChildrenAvailable"
WAITING_REASON = "PodsNotAvailable"
FAILED_REASON = DEADLINE_EXCEEDED


def rollout(deployment: Mapping[str, Any]) -> Rollout:
    """The Deployment's rollout as ``kubectl rollout status`` reports it."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    if int(meta.get("generation") or 0) > int(status.get("observedGeneration") or 0):
        return Rollout(False, "its controller has not seen the latest spec yet")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == DEADLINE_EXCEEDED:
            return Rollout(False, f"exceeded its progress deadline: {cond.get('message')}", True)
    desired = int(spec.get("replicas", 1))
    replicas = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < desired:
        return Rollout(False, f"{updated} of {desired} new replicas have been updated")
    if replicas > updated:
        return Rollout(False, f"{replicas - updated} old replicas are pending termination")
    if available < updated:
        return Rollout(False, f"{available} of {updated} updated replicas are available")
    return Rollout(True, f"{available} of {desired} replicas available")


def availability(pipeline: str, deployments: Iterable[Mapping[str, Any]]) -> Availability:
    """Ready for the pipeline: every child Deployment (matched by its component label) rolled
    out; otherwise a message naming each child that is waiting, and why."""
    by_component = {component_of(d): d for d in deployments}
    waiting: list[str] = []
    failed = False
    for component in COMPONENTS:
        name = child_name(pipeline, component)
        dep = by_component.get(component)
        if dep is None:
            waiting.append(f"{name}: not created yet")
            continue
        state = rollout(dep)
        if not state.done:
            waiting.append(f"{name}: {state.message}")
            failed = failed or state.failed
    if not waiting:
        return Availability(
            True, READY_REASON, "all children are in shape and their pods are available"
        )
    reason = FAILED_REASON if failed else WAITING_REASON
    return Availability(False, reason, "waiting for " + "; ".join(waiting))


def signature(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """What of a Deployment's watch event can change the pipeline's Ready condition."""
    state = rollout(deployment)
    return state.done, state.message
