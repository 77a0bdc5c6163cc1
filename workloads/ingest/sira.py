"""SIRA anomaly detection, called by the consumer after each committed batch.

PLACEHOLDER INTERFACE: the detector itself is being written (issue 4). The consumer codes
against ``AnomalyDetector.on_batch``; this no-op keeps it runnable until then.
"""

from __future__ import annotations

from datetime import datetime


class AnomalyDetector:
    async def on_batch(self, merchants: set[str | None], watermark: datetime) -> None:
        """Judge the time buckets that ``watermark`` (newest event time seen) has closed."""
        del merchants, watermark
