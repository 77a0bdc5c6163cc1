"""Stored offsets against a partition's log: which are outside it, and how each is reported."""

from __future__ import annotations

from molam_workloads.core.errors import ExitCode
from molam_workloads.ingest.offsets import OffsetsLost, outside_log


def test_only_offsets_outside_the_log_are_reported() -> None:
    stored = {0: 50, 1: 300, 2: 120, 3: 0, 4: 7}
    starts = {0: 80, 1: 0, 2: 0, 3: 0}  # 4: not asked (not assigned here)
    ends = {0: 200, 1: 120, 2: 120, 3: 0}
    lost = outside_log("w", stored, starts, ends)
    assert [(x.partition, x.kind, x.lost) for x in lost] == [
        (0, "before_start", 30),
        (1, "past_end", None),
    ]
    assert "offsets 50..79 were deleted before they were read" in lost[0].describe()
    assert "stored offset 300 is past the log end (120, start 0)" in lost[1].describe()
    report = lost[1].report("reset")
    assert (report["kind"], report["stored"], report["log_end"], report["policy"]) == (
        "past_end", 300, 120, "reset",
    )  # fmt: skip


def test_stopping_on_lost_offsets_has_its_own_exit_code() -> None:
    assert OffsetsLost("x").exit_code == ExitCode.OFFSETS_INCONSISTENT == 4
