"""Stored offsets against the broker's log: a stored offset outside the log is data loss, never
a silent skip.

The consumer's offsets live in PostgreSQL beside the data and only move forward. A broker that
lost its log (a topic re-created or truncated, memory storage restarted) starts the partition
again at a lower end: seeking to the stored offset would skip everything the new log holds
below it. A stored offset below the log's start means records were deleted (retention) before
they were read. Both are looked for at every assignment: the stored offset against ListOffsets
EARLIEST, and against the end where ListOffsets LATEST puts it past the end, that end then
confirmed by reading the log's last records (Tansu reports the base offset of the last *batch*
+ 1). A fetch the broker refuses as out of range (Kafka does; Tansu answers with nothing) is
checked the same way. Then ``INGEST_OFFSET_LOSS_POLICY`` applies: ``reset`` (the default) reads
the partition again from its log start, the ledger making the re-read exactly-once, and
reports the range; ``stop`` exits with ``ExitCode.OFFSETS_INCONSISTENT`` (4) so that someone
looks first. Either way: an error line, ``analytics_ingest_offset_loss{kind}``, and /health.

Not detectable from offsets alone: a log re-created and grown past the stored offset before the
consumer looks (aiokafka does not expose topic ids). docs/faults.md says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from molam_workloads.core.errors import ExitCode, MolamError

OffsetLossPolicy = Literal["reset", "stop"]


class OffsetsLost(MolamError):
    """Stored offsets outside the log, and the policy is ``stop``."""

    exit_code = ExitCode.OFFSETS_INCONSISTENT


@dataclass(frozen=True)
class OffsetLoss:
    topic: str
    partition: int
    stored: int  # the next offset PostgreSQL holds
    start: int  # the log's first offset now
    end: int | None  # its end as ListOffsets says (None: not asked)

    @property
    def kind(self) -> str:
        return "before_start" if self.stored < self.start else "past_end"

    @property
    def lost(self) -> int | None:
        """Offsets certainly never read (before_start), None when unknown (past_end)."""
        return self.start - self.stored if self.stored < self.start else None

    def describe(self) -> str:
        where = f"{self.topic}[{self.partition}]"
        if self.kind == "before_start":
            return (
                f"{where}: stored offset {self.stored} is below the log start {self.start}:"
                f" offsets {self.stored}..{self.start - 1} were deleted before they were read"
            )
        return (
            f"{where}: stored offset {self.stored} is past the log end"
            f" ({'unknown' if self.end is None else self.end}, start {self.start}): the log was"
            " truncated or re-created; records of the old log from that offset on, if any,"
            " were never read"
        )

    def report(self, policy: OffsetLossPolicy) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "kind": self.kind,
            "stored": self.stored,
            "log_start": self.start,
            "log_end": self.end,
            "lost": self.lost,
            "policy": policy,
            "at": datetime.now(UTC).isoformat(),
        }


def outside_log(
    topic: str, stored: Mapping[int, int], starts: Mapping[int, int], ends: Mapping[int, int]
) -> list[OffsetLoss]:
    """The partitions whose stored offset is outside the log [start, end]."""
    return [
        OffsetLoss(topic, p, offset, starts[p], ends.get(p))
        for p, offset in sorted(stored.items())
        if p in starts and (offset < starts[p] or (p in ends and offset > ends[p]))
    ]
