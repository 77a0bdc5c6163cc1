"""The per-pipeline daemon's timing (virtual time: looptime) and what wakes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from molam_operator.context import OperatorContext, PipelineRuntime
from molam_operator.pipeline import _nap
from molam_operator.settings import OperatorSettings


class Stopped:
    """Stands in for kopf.DaemonStopped: falsy until set, awaitable."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self) -> Any:
        return self._event.wait()


def context() -> OperatorContext:
    return OperatorContext(settings=OperatorSettings(), kube=None, cron_job_api_version="batch/v1")  # type: ignore[arg-type]


@pytest.mark.looptime
async def test_nap_sleeps_the_poll_interval() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await _nap(PipelineRuntime(), Stopped(), 15)  # type: ignore[arg-type]
    assert loop.time() - t0 == pytest.approx(15)


@pytest.mark.looptime
async def test_a_child_change_ends_the_nap_at_once() -> None:
    loop = asyncio.get_running_loop()
    ctx = context()
    rt = ctx.runtime("ns", "analytics")
    loop.call_later(2, ctx.kick, "ns", "analytics")
    t0 = loop.time()
    await _nap(rt, Stopped(), 15)  # type: ignore[arg-type]
    assert loop.time() - t0 == pytest.approx(2)
    assert rt.recheck


@pytest.mark.looptime
async def test_a_spec_change_polls_now_without_a_recheck() -> None:
    loop = asyncio.get_running_loop()
    ctx = context()
    rt = ctx.runtime("ns", "analytics")
    rt.poll_now = False
    loop.call_later(3, ctx.poll_now, "ns", "analytics")
    t0 = loop.time()
    await _nap(rt, Stopped(), 15)  # type: ignore[arg-type]
    assert loop.time() - t0 == pytest.approx(3)
    assert rt.poll_now and not rt.recheck


@pytest.mark.looptime
async def test_stopping_ends_the_nap() -> None:
    loop = asyncio.get_running_loop()
    stopped = Stopped()
    loop.call_later(1, stopped.set)
    t0 = loop.time()
    await _nap(PipelineRuntime(), stopped, 60)  # type: ignore[arg-type]
    assert loop.time() - t0 == pytest.approx(1)


def test_status_only_updates_of_children_do_not_kick() -> None:
    ctx = context()
    rt = ctx.runtime("ns", "p")

    def event(kind: str | None, generation: int | None, uid: str = "u1") -> bool:
        return ctx.child_event(kind, uid=uid, generation=generation, namespace="ns", pipeline="p")

    assert not event(None, 1)  # initial listing: remembered, nothing to do
    assert not event("MODIFIED", 1)  # status update by the controllers
    assert event("MODIFIED", 2)  # spec edited (by hand or by us)
    assert rt.recheck
    rt.recheck = False
    assert event("MODIFIED", None, uid="cm")  # ConfigMaps have no generation: always look
    assert event("DELETED", 2)
    assert not event("ADDED", 1, uid="u2")
    # A pipeline the operator does not know (yet): nothing to wake, no error.
    assert ctx.child_event("DELETED", uid="x", generation=1, namespace="ns", pipeline="gone")


def test_a_deployment_whose_pods_change_asks_for_ready_again() -> None:
    ctx = context()
    rt = ctx.runtime("ns", "p")

    def event(kind: str | None, rollout: tuple[bool, str]) -> None:
        ctx.child_event(kind, uid="d1", generation=1, namespace="ns", pipeline="p", rollout=rollout)

    waiting = (False, "0 of 2 updated replicas are available")
    event(None, waiting)  # initial listing: the daemon's first reconcile judges it
    assert not rt.rollouts_changed and not rt.wakeup.is_set()
    event("MODIFIED", waiting)  # a status update that changes nothing Ready depends on
    assert not rt.rollouts_changed
    event("MODIFIED", (True, "2 of 2 replicas available"))  # the pods became available
    assert rt.rollouts_changed and rt.wakeup.is_set() and not rt.recheck
