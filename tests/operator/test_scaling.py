"""The scaling decision (pure) and the trend sizing, table-driven."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from molam_operator.lagprobe import observe
from molam_operator.scaling import (
    LagObservation,
    ProbeFailure,
    Reason,
    ScalerMemory,
    decide,
    threshold_replicas,
    trend_replicas,
)
from molam_operator.spec import ConsumerScaling
from molam_workloads.core.kafka import GroupLag, PartitionLag

SCALING_SIM = Path(__file__).resolve().parents[2] / "bench" / "_scaling_sim.py"


def _load_scaling_sim() -> ModuleType:
    """bench/_scaling_sim.py (bench/ holds scripts, not a package), imported by its path."""
    spec = importlib.util.spec_from_file_location("molam_bench_scaling_sim", SCALING_SIM)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


scaling_sim = _load_scaling_sim()
simulate, synthetic_trace = scaling_sim.simulate, scaling_sim.synthetic_trace

POLICY = ConsumerScaling(
    min_replicas=1,
    max_replicas=8,
    lag_threshold=5000,
    poll_seconds=15,
    scale_down_stabilization_seconds=300,
)


def obs(lag: int, partitions: int = 12) -> LagObservation:
    return LagObservation(lag=lag, partitions=partitions, end_offsets=lag, committed=0)


@pytest.mark.parametrize(
    ("lag", "partitions", "policy", "current", "desired", "reason"),
    [
        # the runbook's thresholds: > 5000 -> 2, > 10000 -> 3
        (0, 12, POLICY, 1, 1, Reason.stable),
        (4999, 12, POLICY, 1, 1, Reason.stable),
        (5000, 12, POLICY, 1, 1, Reason.stable),
        (5001, 12, POLICY, 1, 2, Reason.scaled_up),
        (10001, 12, POLICY, 1, 3, Reason.scaled_up),
        # scale up jumps straight to the answer
        (39000, 12, POLICY, 1, 8, Reason.scaled_up),
        # maxReplicas caps
        (1_000_000, 12, POLICY, 2, 8, Reason.scaled_up),
        # partitions cap: more consumers than partitions would idle
        (1_000_000, 3, POLICY, 1, 3, Reason.scaled_up),
        (1_000_000, 3, POLICY, 3, 3, Reason.stable),
        # minReplicas floors, and wins over a topic with fewer partitions
        (0, 12, replace(POLICY, min_replicas=2), 1, 2, Reason.scaled_up),
        (0, 1, replace(POLICY, min_replicas=2), 2, 2, Reason.stable),
        # scale to zero when allowed
        (
            0,
            12,
            replace(POLICY, min_replicas=0, scale_down_stabilization_seconds=0),
            1,
            0,
            Reason.scaled_down,
        ),
        # paused: 0, whatever the lag
        (1_000_000, 12, replace(POLICY, paused=True), 4, 0, Reason.paused),
        (0, 12, replace(POLICY, paused=True), 0, 0, Reason.paused),
        # lower lag: held by the stabilization window
        (0, 12, POLICY, 4, 4, Reason.stabilizing),
    ],
)
def test_decision_table(
    lag: int,
    partitions: int,
    policy: ConsumerScaling,
    current: int,
    desired: int,
    reason: Reason,
) -> None:
    d = decide(
        policy, current=current, observation=obs(lag, partitions), now=100.0, memory=ScalerMemory()
    )
    assert (d.desired, d.reason) == (desired, reason), d.message


@pytest.mark.parametrize("failure", list(ProbeFailure))
def test_probe_failures_hold_the_current_count(failure: ProbeFailure) -> None:
    mem = ScalerMemory(low_since=5.0, window_peak=3)
    for current in (1, 3, 8):
        d = decide(POLICY, current=current, observation=failure, now=100.0, memory=mem)
        assert d.desired == current
        assert d.reason == Reason.holding
        assert failure.value in d.message
        # the failure does not count as "low lag" time
        assert d.memory.low_since is None


def test_probe_failure_still_applies_changed_bounds() -> None:
    d = decide(
        replace(POLICY, max_replicas=2),
        current=5,
        observation=ProbeFailure.broker_unreachable,
        now=0.0,
        memory=ScalerMemory(),
    )
    assert (d.desired, d.reason) == (2, Reason.clamped)


def test_paused_stays_zero_through_failures_and_lag() -> None:
    paused = replace(POLICY, paused=True)
    for o in (obs(10**6), ProbeFailure.topic_not_found, obs(0)):
        assert decide(paused, current=0, observation=o, now=1.0, memory=ScalerMemory()).desired == 0


def test_paused_by_hand_is_honoured() -> None:
    d = decide(
        POLICY,
        current=0,
        observation=obs(10**6),
        now=1.0,
        memory=ScalerMemory(),
        paused_by_hand=True,
    )
    assert (d.desired, d.reason) == (0, Reason.paused_by_hand)


def run(policy: ConsumerScaling, steps: list[tuple[float, int]], current: int) -> list[int]:
    """Feed (time, lag) polls; returns the replica count after each."""
    mem, out = ScalerMemory(), []
    for t, lag in steps:
        d = decide(policy, current=current, observation=obs(lag), now=t, memory=mem)
        mem, current = d.memory, d.desired
        out.append(current)
    return out


def test_scale_down_waits_for_the_whole_window() -> None:
    # 4 replicas; the lag drops; down only once it stayed low for 300 s.
    steps = [(0, 20000), (15, 0), (100, 0), (314, 0), (315, 0), (330, 0)]
    assert run(POLICY, steps, current=4) == [4, 4, 4, 4, 1, 1]


def test_a_spike_inside_the_window_restarts_it() -> None:
    steps = [(0, 0), (200, 16000), (215, 0), (500, 0), (515, 0)]
    # at 200 the lag wants 4 > 4? no: 16000/5000 -> 4 == current: window reset
    assert run(POLICY, steps, current=4) == [4, 4, 4, 4, 1]


def test_scale_down_goes_to_the_highest_recommendation_of_the_window() -> None:
    steps = [(0, 0), (100, 12000), (200, 0), (300, 0)]
    # recommendations inside the window: 1, 3, 1 (< 6): after 300 s go to 3, not 1
    assert run(POLICY, steps, current=6) == [6, 6, 6, 3]


def test_zero_window_scales_down_at_once() -> None:
    assert run(replace(POLICY, scale_down_stabilization_seconds=0), [(0, 0)], current=5) == [1]


@pytest.mark.parametrize(
    ("lag", "threshold", "want"),
    [(0, 5000, 0), (1, 5000, 1), (5000, 5000, 1), (5001, 5000, 2), (-3, 10, 0)],
)
def test_threshold_replicas(lag: int, threshold: int, want: int) -> None:
    assert threshold_replicas(lag, threshold) == want


@pytest.mark.parametrize(
    ("lag", "arrival", "rate", "drain", "want"),
    [
        (0, 0.0, 100.0, 60, 0),  # nothing to do
        (0, 250.0, 100.0, 60, 3),  # keep up with arrivals
        (6000, 0.0, 100.0, 60, 1),  # drain 6000 in 60 s at 100/s per replica
        (6000, 200.0, 100.0, 60, 3),  # both
        (6001, 200.0, 100.0, 60, 4),
    ],
)
def test_trend_replicas(lag: int, arrival: float, rate: float, drain: int, want: int) -> None:
    assert trend_replicas(lag, arrival, rate, drain) == want


def test_trend_rule_scales_a_growing_stream_before_the_backlog_is_large() -> None:
    policy = replace(POLICY, target_drain_seconds=60, poll_seconds=10)
    mem = ScalerMemory()
    # 2 replicas consume 200/s each; 1000/s arrive: the backlog grows by 600/s.
    end = committed = 0
    current = 2
    decisions = []
    for t in range(0, 40, 10):
        o = LagObservation(end - committed, 12, end, committed)
        d = decide(policy, current=current, observation=o, now=float(t), memory=mem)
        mem = d.memory
        decisions.append(d)
        end += 1000 * 10
        committed += 2 * 200 * 10
    # The per-replica rate needs a backlog between two samples: known from the third poll.
    # There, at lag 12000 (threshold rule: 3), it asks for enough replicas to keep up with
    # 1000/s and drain in 60 s: ceil((1000 + 12000/60) / 200) = 6.
    assert [d.rule for d in decisions[:3]] == ["threshold", "threshold", "trend"]
    assert decisions[2].desired == 6
    assert threshold_replicas(12000, 5000) == 3


def test_trend_rule_does_not_hold_replicas_for_a_shrinking_backlog() -> None:
    policy = replace(POLICY, target_drain_seconds=300, scale_down_stabilization_seconds=0)
    # 8 replicas at 500/s each drain a 30000 backlog while 100/s arrive.
    mem = ScalerMemory()
    end, committed, current = 30000, 0, 8
    for t in (0, 15):
        o = LagObservation(end - committed, 12, end, committed)
        d = decide(policy, current=current, observation=o, now=float(t), memory=mem)
        mem, current = d.memory, d.desired
        end += 100 * 15
        committed += 8 * 500 * 15
    # lag is 30000+1500-60000 -> already drained by then; the threshold rule would have kept
    # ceil(30000/5000) = 6 at t=0; the trend rule sizes from the rates.
    assert current < 6


def test_trend_falls_back_to_threshold_until_rates_are_known() -> None:
    policy = replace(POLICY, target_drain_seconds=60)
    d = decide(policy, current=1, observation=obs(12000), now=0.0, memory=ScalerMemory())
    assert (d.rule, d.desired) == ("threshold", 3)


def test_simulation_trend_beats_threshold_on_the_synthetic_trace() -> None:
    trace = synthetic_trace()
    base = simulate(POLICY, trace, partitions=12, replica_capacity=500)
    trend = simulate(
        replace(POLICY, target_drain_seconds=60), trace, partitions=12, replica_capacity=500
    )
    assert trend.scale_events < base.scale_events
    assert trend.peak_lag < base.peak_lag
    assert base.final_lag == 0 and trend.final_lag == 0


def test_simulation_is_deterministic() -> None:
    trace = synthetic_trace(600)
    a = simulate(POLICY, trace, partitions=4, replica_capacity=500)
    b = simulate(POLICY, trace, partitions=4, replica_capacity=500)
    assert (a.scale_events, a.peak_lag, a.replica_seconds) == (
        b.scale_events,
        b.peak_lag,
        b.replica_seconds,
    )


# ------------------------------------------------------------------------ lag probe adapter


def group(*parts: tuple[int, int | None]) -> GroupLag:
    return GroupLag(
        "g", "t", tuple(PartitionLag("t", i, end, c) for i, (end, c) in enumerate(parts))
    )


def test_observe_sums_partitions() -> None:
    o = observe(group((100, 40), (50, 50), (10, None)), {0: 0, 1: 0, 2: 0})
    assert o == LagObservation(lag=60 + 0 + 10, partitions=3, end_offsets=160, committed=90)


def test_a_new_group_lags_from_the_log_start() -> None:
    # No commits yet: the consumer (auto_offset_reset=earliest) reads from each log start,
    # which retention may have moved past 0.
    o = observe(group((100, None), (5, None)), {0: 30, 1: 0})
    assert o == LagObservation(lag=70 + 5, partitions=2, end_offsets=105, committed=30)
    policy = replace(POLICY, lag_threshold=10)
    assert decide(policy, current=1, observation=o, now=0, memory=ScalerMemory()).desired == 2


def test_a_commit_behind_the_log_start_lags_from_the_log_start() -> None:
    # The records after the commit are gone: the consumer resets to the log start.
    o = observe(group((100, 10), (50, 20)), {0: 40, 1: 0})
    assert o == LagObservation(lag=60 + 30, partitions=2, end_offsets=150, committed=60)
