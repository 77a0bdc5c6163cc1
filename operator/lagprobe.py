"""The lag probe: the shared core's ListOffsets + OffsetFetch measurement, as scaling input."""

from __future__ import annotations

from molam_operator.scaling import LagObservation, ProbeFailure
from molam_workloads.core.errors import ServiceUnavailable
from molam_workloads.core.kafka import GroupLag, TopicNotFound, group_lag


def observe(lag: GroupLag) -> LagObservation | ProbeFailure:
    """A measured group lag as the scaler sees it.

    A group that never committed is a failure, not "everything is lag": before the consumer's
    first commit the backlog says nothing about how far behind it is (it may start from the
    latest offset), and scaling on it would jump to the maximum and back.
    """
    if not lag.has_commits:
        return ProbeFailure.no_committed_offsets
    return LagObservation(
        lag=lag.total,
        partitions=len(lag.partitions),
        end_offsets=sum(p.end_offset for p in lag.partitions),
        committed=sum(p.committed if p.committed is not None else 0 for p in lag.partitions),
    )


async def probe(
    bootstrap: str, group: str, topic: str, *, timeout: float
) -> tuple[LagObservation | ProbeFailure, str]:
    """Measure now; the second item is a one-line explanation for the LagProbe condition."""
    try:
        measured = await group_lag(bootstrap, group, topic, timeout=timeout)
    except TopicNotFound as exc:
        return ProbeFailure.topic_not_found, str(exc)
    except ServiceUnavailable as exc:
        return ProbeFailure.broker_unreachable, str(exc)
    result = observe(measured)
    if result is ProbeFailure.no_committed_offsets:
        return result, f"group {group!r} has no committed offsets on topic {topic!r} yet"
    assert isinstance(result, LagObservation)
    return result, (
        f"lag {result.lag} over {result.partitions} partition(s) of {topic!r} for group {group!r}"
    )
