"""The consumer's scaling decision: pure functions of the lag, the policy and what was seen before.

Two sizing rules:

* **threshold** (as KEDA's Kafka scaler): ``ceil(lag / lagThreshold)``;
* **trend** (``targetDrainSeconds``): from successive offset samples the operator knows the
  arrival rate λ (growth of the end offsets) and what one replica consumes, μ (growth of the
  committed offsets per replica while there was a backlog); it picks the fewest replicas ``r``
  with ``r·μ ≥ λ + lag / targetDrainSeconds`` — enough to keep up *and* drain the backlog in
  time. A growing stream scales before its backlog is large; a backlog already shrinking fast
  does not hold extra replicas. Until both rates are known it falls back to the threshold rule.

Both are clamped to ``[minReplicas, min(maxReplicas, partitions)]`` (``minReplicas`` wins if the
topic has fewer partitions: it is the user's floor). Scale-up is immediate; scale-down waits until
every recommendation for ``scaleDownStabilizationSeconds`` was lower than the current count, and
then goes to the highest of them (as the HPA does). ``paused`` means 0. A failed probe (broker
unreachable, topic missing, Kafka Secret missing) keeps the current count.

Nothing here does I/O or reads a clock: time comes in as ``now`` (seconds, monotonic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from molam_operator.spec import ConsumerScaling

# Weight of the newest rate measurement in the moving averages (0..1).
RATE_SMOOTHING = 0.5


class ProbeFailure(StrEnum):
    """Why the lag could not be measured (the LagProbe condition's reason)."""

    broker_unreachable = "BrokerUnreachable"
    topic_not_found = "TopicNotFound"
    kafka_secret_missing = "KafkaSecretMissing"  # a Secret spec.kafka names is not there
    kafka_secret_invalid = "KafkaSecretInvalid"  # its PEM files cannot be loaded


@dataclass(frozen=True)
class LagObservation:
    """One successful lag probe, summed over the topic's partitions."""

    lag: int
    partitions: int
    end_offsets: int  # sum of the partitions' end offsets
    committed: int  # sum of where the group reads from (committed offset, else the log start)


@dataclass(frozen=True)
class Sample:
    at: float
    end_offsets: int
    committed: int
    lag: int
    replicas: int


@dataclass(frozen=True)
class ScalerMemory:
    """What the scaler keeps between two polls of one pipeline (in the operator's memo)."""

    low_since: float | None = None  # since when every recommendation was below current
    window_peak: int = 0  # highest recommendation since low_since
    last: Sample | None = None
    arrival_rate: float | None = None  # messages/s arriving
    replica_rate: float | None = None  # messages/s one replica consumes (measured under backlog)


class Reason(StrEnum):
    scaled_up = "ScaledUp"
    scaled_down = "ScaledDown"
    paused = "Paused"
    paused_by_hand = "PausedByHand"
    stable = "Stable"
    stabilizing = "StabilizingScaleDown"
    holding = "HoldingReplicas"  # probe failed: keep the current count
    clamped = "Clamped"  # bounds changed while the lag is unknown


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: Reason
    message: str
    memory: ScalerMemory
    recommendation: int | None = None  # the sizing rule's answer before stabilization
    rule: str = "threshold"

    def changes(self, current: int) -> bool:
        return self.desired != current


def clamp(value: int, low: int, high: int) -> int:
    """``low`` wins when ``high < low``."""
    return max(low, min(value, high))


def bounds(policy: ConsumerScaling, partitions: int | None) -> tuple[int, int]:
    high = policy.max_replicas if partitions is None else min(policy.max_replicas, partitions)
    return policy.min_replicas, max(high, policy.min_replicas)


def threshold_replicas(lag: int, lag_threshold: int) -> int:
    return math.ceil(max(lag, 0) / lag_threshold)


def trend_replicas(
    lag: int, arrival_rate: float, replica_rate: float, target_drain_seconds: int
) -> int:
    """Fewest ``r`` with ``r·replica_rate ≥ arrival_rate + lag / target_drain_seconds``."""
    need = max(arrival_rate, 0.0) + max(lag, 0) / target_drain_seconds
    if need <= 0:
        return 0
    # A tiny epsilon so that an exact fit (need == r·rate) is not rounded up by float noise.
    return math.ceil(need / replica_rate - 1e-9)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else RATE_SMOOTHING * new + (1 - RATE_SMOOTHING) * old


def update_rates(
    memory: ScalerMemory, obs: LagObservation, now: float, current: int
) -> ScalerMemory:
    """Fold one more offset sample into the arrival and per-replica consume rates."""
    arrival, per_replica = memory.arrival_rate, memory.replica_rate
    prev = memory.last
    if prev is not None and now > prev.at:
        dt = now - prev.at
        grown = obs.end_offsets - prev.end_offsets
        consumed = obs.committed - prev.committed
        if grown >= 0 and consumed >= 0:  # negative: topic recreated or offsets reset
            arrival = _ewma(arrival, grown / dt)
            # Consumption tells the capacity only while there was a backlog to consume and the
            # replica count did not change in between; a caught-up group consumes what arrives.
            if prev.lag > 0 and prev.replicas > 0 and prev.replicas == current and consumed > 0:
                per_replica = _ewma(per_replica, consumed / dt / prev.replicas)
        else:
            arrival, per_replica = None, None
    sample = Sample(now, obs.end_offsets, obs.committed, obs.lag, current)
    return replace(memory, last=sample, arrival_rate=arrival, replica_rate=per_replica)


def recommend(
    policy: ConsumerScaling, obs: LagObservation, memory: ScalerMemory
) -> tuple[int, str]:
    """The sizing rule's unclamped answer and which rule gave it."""
    if (
        policy.target_drain_seconds is not None
        and memory.arrival_rate is not None
        and memory.replica_rate is not None
        and memory.replica_rate > 0
    ):
        return (
            trend_replicas(
                obs.lag, memory.arrival_rate, memory.replica_rate, policy.target_drain_seconds
            ),
            "trend",
        )
    return threshold_replicas(obs.lag, policy.lag_threshold), "threshold"


def decide(
    policy: ConsumerScaling,
    *,
    current: int,
    observation: LagObservation | ProbeFailure,
    now: float,
    memory: ScalerMemory,
    paused_by_hand: bool = False,
) -> Decision:
    """How many consumer replicas there should be now, and why."""
    if policy.paused:
        return Decision(0, Reason.paused, "spec.consumer.paused is true", ScalerMemory())
    if paused_by_hand:
        return Decision(
            0,
            Reason.paused_by_hand,
            "the consumer was scaled to 0 by hand; scale it up (or set spec.consumer.paused) "
            "to hand it back to the scaler",
            ScalerMemory(),
        )
    if isinstance(observation, ProbeFailure):
        low, high = bounds(policy, None)
        held = clamp(current, low, high)
        # Forget the offset sample: rates measured across the gap would be wrong.
        mem = replace(memory, low_since=None, window_peak=0, last=None)
        if held != current:
            return Decision(
                held,
                Reason.clamped,
                f"lag unknown ({observation.value}); replicas brought within [{low}, {high}]",
                mem,
            )
        return Decision(
            current,
            Reason.holding,
            f"lag unknown ({observation.value}); keeping {current} replica(s)",
            mem,
        )

    memory = update_rates(memory, observation, now, current)
    raw, rule = recommend(policy, observation, memory)
    low, high = bounds(policy, observation.partitions)
    want = clamp(raw, low, high)
    basis = f"lag {observation.lag} over {observation.partitions} partition(s), {rule} rule"
    if want > current:
        return Decision(
            want,
            Reason.scaled_up,
            f"{basis} wants {want} replica(s) (had {current})",
            replace(memory, low_since=None, window_peak=0),
            recommendation=raw,
            rule=rule,
        )
    if want == current:
        return Decision(
            current,
            Reason.stable,
            f"{basis}: {current} replica(s) fit",
            replace(memory, low_since=None, window_peak=0),
            recommendation=raw,
            rule=rule,
        )
    # want < current: only after the stabilization window, and to the window's peak.
    low_since = memory.low_since if memory.low_since is not None else now
    peak = max(memory.window_peak, want) if memory.low_since is not None else want
    waited = now - low_since
    if waited >= policy.scale_down_stabilization_seconds:
        return Decision(
            peak,
            Reason.scaled_down,
            f"{basis}: below {current} replica(s) for {waited:.0f}s, scaling to {peak}",
            replace(memory, low_since=None, window_peak=0),
            recommendation=raw,
            rule=rule,
        )
    return Decision(
        current,
        Reason.stabilizing,
        f"{basis} wants {want}; keeping {current} until lag has stayed low for "
        f"{policy.scale_down_stabilization_seconds}s ({waited:.0f}s so far)",
        replace(memory, low_since=low_since, window_peak=peak),
        recommendation=raw,
        rule=rule,
    )
