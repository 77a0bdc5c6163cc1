"""Garbage-collector settings of the long-running commands (consume, api)."""

from __future__ import annotations

import gc

# The consumer's per-event objects all die with their batch, so it collects young objects
# every 50,000 allocations rather than CPython's 700 (docs/decisions/008-startup-heap.md).
CONSUMER_GEN0_THRESHOLD = 50_000


def freeze_startup_heap(gen0_threshold: int | None = None) -> None:
    """Move everything built so far (modules, app, settings) out of the collector's sight.

    Those objects live as long as the process; frozen, full collections no longer walk them,
    which keeps the pauses short (tail latency, throughput). ``gen0_threshold``: collect young
    objects after this many allocations instead of CPython's 700.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold is not None:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
