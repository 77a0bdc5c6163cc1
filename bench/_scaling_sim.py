"""The consumer scaler run against a synthetic stream: a benchmark and test tool, not the operator.

``simulate`` drives ``molam_operator.scaling.decide`` one simulated second at a time, so the
trend rule (``targetDrainSeconds``) can be compared with the threshold rule without a cluster;
``synthetic_trace`` is the stream both bench/kube_operator.py and tests/operator/test_scaling.py
use.
A module of bench/ (a leading underscore: ``make bench`` does not run it on its own).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from molam_operator.scaling import LagObservation, ScalerMemory, decide
from molam_operator.spec import ConsumerScaling


@dataclass
class SimulationResult:
    scale_events: int
    peak_lag: int
    replica_seconds: int
    final_lag: int
    replicas: list[int] = field(default_factory=list)  # per second
    lags: list[int] = field(default_factory=list)  # per second


def simulate(
    policy: ConsumerScaling,
    arrivals: Sequence[int] | Iterable[int],
    *,
    partitions: int,
    replica_capacity: int,
    startup_seconds: int = 10,
    initial_replicas: int | None = None,
) -> SimulationResult:
    """Run the scaler against a synthetic stream, one step per second.

    ``arrivals[t]`` messages arrive in second ``t``; each ready replica consumes up to
    ``replica_capacity`` per second and commits as it goes; a new replica is ready
    ``startup_seconds`` after it is asked for (a scale-down takes effect at once). The scaler
    polls every ``policy.poll_seconds``.
    """
    replicas = policy.min_replicas if initial_replicas is None else initial_replicas
    ready_at: list[int] = [0] * replicas  # when each replica starts consuming
    end = committed = 0
    memory = ScalerMemory()
    result = SimulationResult(0, 0, 0, 0)
    for t, arriving in enumerate(arrivals):
        if t % policy.poll_seconds == 0:
            obs = LagObservation(end - committed, partitions, end, committed)
            d = decide(policy, current=replicas, observation=obs, now=float(t), memory=memory)
            memory = d.memory
            if d.desired != replicas:
                result.scale_events += 1
                if d.desired > replicas:
                    ready_at += [t + startup_seconds] * (d.desired - replicas)
                else:
                    ready_at = ready_at[: d.desired]
                replicas = d.desired
        end += arriving
        ready = sum(1 for r in ready_at if r <= t)
        committed += min(end - committed, ready * replica_capacity)
        lag = end - committed
        result.peak_lag = max(result.peak_lag, lag)
        result.replica_seconds += replicas
        result.replicas.append(replicas)
        result.lags.append(lag)
    result.final_lag = end - committed
    return result


def synthetic_trace(seconds: int = 3600, *, seed: int = 7) -> list[int]:
    """A payments day compressed into an hour: quiet, a ramp to a peak, a lunch spike, a decline.

    Deterministic (a small LCG for the noise) so tests and the benchmark see the same stream.
    """
    state = seed
    out = []
    for t in range(seconds):
        x = t / seconds
        base = 200 + 1800 * math.sin(math.pi * x) ** 2  # 200/s .. 2000/s and back
        spike = 1500 if 0.55 <= x < 0.60 else 0  # a 3-minute burst
        state = (1103515245 * state + 12345) % (1 << 31)
        noise = 1 + 0.2 * ((state / (1 << 31)) - 0.5)  # ±10%
        out.append(int((base + spike) * noise))
    return out
