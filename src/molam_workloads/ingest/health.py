"""The consumer's state as its /health shows it: what it waits for, what it found wrong.

A service that is down (PostgreSQL, the broker) is waited for, never a reason to exit: the
batch stays in memory and the call is tried again with ``core.faults.backoff`` for as long as
the outage lasts (each ``Outage`` logs, and moves ``analytics_waiting_for``). Stored offsets
found outside their partition's log are kept here too, the newest ``KEPT_REPORTS`` of them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from molam_workloads.core.faults import Outage

log = logging.getLogger(__name__)

COMPONENT = "consume"
KEPT_REPORTS = 20


class ConsumerHealth:
    def __init__(self) -> None:
        self.postgres = Outage(COMPONENT, "postgresql", log)
        self.kafka = Outage(COMPONENT, "kafka", log)
        self.offset_loss: list[dict[str, Any]] = []

    def offset_lost(self, report: dict[str, Any]) -> None:
        self.offset_loss = [*self.offset_loss, report][-KEPT_REPORTS:]

    def snapshot(self) -> dict[str, Any]:
        """/health's document (read from the metrics thread: only reads, no iteration of
        anything the event loop resizes). ``status``: ok, waiting, or offsets_lost."""
        now = time.monotonic()
        waiting = {
            o.service: {"seconds": round(now - o.since, 1), "errors": o.errors}
            for o in (self.postgres, self.kafka)
            if o.since is not None
        }
        loss = list(self.offset_loss)
        status = "waiting" if waiting else "offsets_lost" if loss else "ok"
        return {"status": status, "waiting_for": waiting, "offset_loss": loss}
