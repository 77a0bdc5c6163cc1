"""``molam-analytics consume``: run the ingestion consumer until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

import asyncpg
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from molam_workloads.core import metrics
from molam_workloads.core.cache import create_redis
from molam_workloads.core.db import create_pool
from molam_workloads.core.heap import CONSUMER_GEN0_THRESHOLD, freeze_startup_heap
from molam_workloads.core.kafka import producer as kafka_producer
from molam_workloads.core.settings import load_settings
from molam_workloads.ingest.consumer import Detector, Ingestor
from molam_workloads.ingest.health import ConsumerHealth
from molam_workloads.ingest.live_counters import LiveCounters
from molam_workloads.ingest.settings import IngestSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics here (default: METRICS_PORT, 9102; 0 disables)",
    )


def _make_detector(
    settings: IngestSettings, pool: asyncpg.Pool, redis: Redis, producer: AIOKafkaProducer
) -> Detector | None:
    """The SIRA detector when enabled; one that cannot even be built is logged and skipped."""
    if not settings.sira_enabled:
        return None
    from molam_workloads.ingest.sira import AnomalyDetector

    try:
        return AnomalyDetector(settings, pool, redis, producer, settings.anomaly_topic)
    except Exception:
        log.exception("SIRA detector could not start; ingesting without anomaly detection")
        metrics.SIRA_FAILURES.inc()
        return None


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(IngestSettings)
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = ConsumerHealth()
    metrics.serve_metrics(port, settings.metrics_address, health=health.snapshot)
    async with (
        create_pool(settings, min_size=1) as pool,
        # Redis feeds live counters and SIRA only: counting goes on while it is away.
        create_redis(settings, required=False) as redis,
        kafka_producer(settings, linger_ms=5) as producer,
    ):
        live = LiveCounters(redis, settings.reporting_currency, settings.live_counter_ttl_seconds)
        detector = _make_detector(settings, pool, redis, producer)
        ingestor = Ingestor(settings, pool, producer, live, detector, health)
        freeze_startup_heap(CONSUMER_GEN0_THRESHOLD)
        # Rebuilds every live counter after Redis lost them, batches coming or not.
        watcher = asyncio.create_task(live.watch(pool, stop), name="live-counters-watch")
        try:
            await ingestor.run(stop)
        finally:
            stop.set()
            await watcher
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
    log.info("consume: stopped cleanly")
    return 0
