"""How often the consumer refreshes live counters: coalesced under a backlog (the longer the
last refresh took, the longer the next waits), at once when idle.

A stand-in for ``LiveCounters`` records the calls (what a refresh writes to Redis is covered
against the real Redis in test_consumer and test_crash_recovery); the Ingestor is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from molam_workloads.core.events import TransactionEvent
from molam_workloads.ingest.aggregation import summarize
from molam_workloads.ingest.consumer import (
    LIVE_REFRESH_BUSY_FACTOR,
    LIVE_REFRESH_MAX_SECONDS,
    LIVE_REFRESH_SECONDS,
    BatchReport,
    Ingestor,
    live_interval,
)
from molam_workloads.ingest.settings import IngestSettings


class RecordingLive:
    def __init__(self, failures: int) -> None:
        self.calls: list[set[str | None]] = []
        self.failures = failures

    async def refresh(self, pool: Any, merchants: Iterable[str | None], now: Any = None) -> int:
        self.calls.append(set(merchants))
        if self.failures:
            self.failures -= 1
            raise RedisError("redis is down")
        return len(self.calls[-1])


def counted(txn: str, merchant: str) -> BatchReport:
    ev = TransactionEvent.model_validate(
        {
            "event_id": f"e-{txn}",
            "txn_id": txn,
            "merchant_id": merchant,
            "occurred_at": datetime.now(UTC),
            "amount": "10",
            "currency": "XOF",
            "country": "SN",
            "channel": "card",
            "type": "payment",
            "status": "succeeded",
        }
    )
    return BatchReport(records=1, counted=summarize([ev], None))


async def test_refreshes_coalesce_while_batches_come_and_a_failed_one_stays_due() -> None:
    live = RecordingLive(failures=1)
    ingestor = Ingestor(
        IngestSettings(sira_enabled=False),
        pool=None,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
        live=live,  # type: ignore[arg-type]
    )
    await ingestor._after_commit(counted("a", "M-1"))  # the first refresh: Redis is down
    await ingestor._after_commit(counted("b", "M-2"))  # within LIVE_REFRESH_SECONDS: waits
    await ingestor._after_commit(counted("c", "M-2"))
    assert live.calls == [{"M-1"}]
    await ingestor.drain()  # idle: everything due now, the failed M-1 included
    assert live.calls == [{"M-1"}, {"M-1", "M-2"}]
    await ingestor.drain()  # nothing due: no call
    assert len(live.calls) == 2


def test_the_interval_is_a_multiple_of_the_last_refresh_within_its_bounds() -> None:
    assert live_interval(0.01) == LIVE_REFRESH_SECONDS
    assert live_interval(0.4) == 0.4 * LIVE_REFRESH_BUSY_FACTOR
    assert live_interval(60.0) == LIVE_REFRESH_MAX_SECONDS


class SlowLive(RecordingLive):
    async def refresh(self, pool: Any, merchants: Iterable[str | None], now: Any = None) -> int:
        await asyncio.sleep(0.4)
        return await super().refresh(pool, merchants, now)


async def test_a_slow_refresh_puts_the_next_one_off_while_batches_come() -> None:
    live = SlowLive(failures=0)
    ingestor = Ingestor(
        IngestSettings(sira_enabled=False),
        pool=None,  # type: ignore[arg-type]
        producer=None,  # type: ignore[arg-type]
        live=live,  # type: ignore[arg-type]
    )
    await ingestor._after_commit(counted("a", "M-1"))
    assert live.calls == [{"M-1"}]
    assert ingestor.live_interval >= 0.4 * LIVE_REFRESH_BUSY_FACTOR
    await asyncio.sleep(0.2)  # ~0.6 s since it started: past LIVE_REFRESH_SECONDS, not 1.6 s
    await ingestor._after_commit(counted("b", "M-2"))
    assert live.calls == [{"M-1"}]
    await ingestor.drain()  # idle: at once, whatever the interval
    assert live.calls == [{"M-1"}, {"M-2"}]
