"""SIRA anomaly detection, called by the consumer after each committed batch.

Every ``SIRA_BUCKET_MINUTES`` (15) bucket of transaction count and volume (gross volume in the
reporting currency) is judged per merchant and platform-wide (series ``_all``) once it is
*closed*: the newest event time any consumer has seen (the watermark, never ahead of the wall
clock) passed the bucket's end by ``SIRA_GRACE_SECONDS`` (120). The bucket's values come from
``txn_minute_agg`` (so they are exactly what was committed; a merchant with no transaction in
it counts 0, which is how drops to nothing are caught). The statistics are in
``sira_stats``: robust EWMA baselines with a minimum history (``SIRA_MIN_HISTORY``),
winsorized updates, a noise floor and optional hour-of-week seasonality (``SIRA_SEASONAL``);
``|z| > SIRA_Z_THRESHOLD`` (3) is an anomaly.

State in Redis (runbook: "check moving average calculation in Redis")::

    sira:pointer                       start (epoch s) of the newest bucket judged
    sira:lock                          held by the one consumer judging (SET NX PX)
    sira:merchants                     merchants seen (judged even in buckets they are silent)
    sira:baseline:<merchant|_all>:<metric>   hash: n m v (overall), rn rm rv (noise),
                                       h<0..167> "n,m,v" (hour-of-week slots); expires after
                                       SIRA_BASELINE_TTL_DAYS without a bucket

Once per anomaly, whatever happens: its row in ``analytics_anomalies`` has a deterministic
``anomaly_key`` (series, metric, bucket) inserted ``ON CONFLICT DO NOTHING``; only a newly
inserted row is logged (``Anomaly detected: ...``, the line the runbook greps) and counted
(``analytics_anomalies_total``). Rows are published to ``ANOMALY_TOPIC`` from the table —
``published_at IS NULL``, claimed ``FOR UPDATE SKIP LOCKED``, marked after the broker
acknowledged — so a crash between insert and publish is retried by the next call and a replay
(same buckets, same keys) publishes nothing. Baselines and the pointer are written in one
Redis transaction (``WATCH`` on the pointer) after the rows are committed: a crash before it
re-judges the same buckets to the same keys. The only duplicate left possible is a crash
between the broker's acknowledgement and the ``published_at`` update; consumers of the topic
can drop it by ``anomaly_key``.

The first call (no pointer) learns from the retained past without judging it. Buckets older
than ``SIRA_HORIZON_HOURS`` (minute data gone: a replay of old events) are skipped, never
judged as drops to zero.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import WatchError

from molam_workloads.core import fx
from molam_workloads.core.cache import PLATFORM
from molam_workloads.core.faults import REDIS_DOWN, Outage
from molam_workloads.core.metrics import ANOMALIES, SIRA_FAILURES
from molam_workloads.core.settings import SiraSettings
from molam_workloads.ingest.sira_stats import (
    HOURS_PER_WEEK,
    DetectorConfig,
    Judgment,
    Moments,
    SeriesState,
    how_slot,
    step,
)

log = logging.getLogger(__name__)

POINTER = "sira:pointer"
LOCK = "sira:lock"
KNOWN = "sira:merchants"
METRICS = ("tx_count", "volume")
LOCK_MS = 120_000
BOOTSTRAP_BUCKETS = 48  # learnt, not judged, on the very first call
MAX_CATCHUP_BUCKETS = 96  # judged at most per call after a long stop
PUBLISH_CHECK_SECONDS = 30.0
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"


def baseline_key(series: str, metric: str) -> str:
    return f"sira:baseline:{series}:{metric}"


def anomaly_key(series: str, metric: str, bucket: datetime) -> str:
    return f"{series}|{metric}|{bucket.astimezone(UTC).isoformat()}"


def _s(x: str | bytes | None) -> str | None:
    """Redis replies as text whether or not the client decodes responses."""
    return x.decode() if isinstance(x, bytes) else x


def _moments(raw: str | None) -> Moments:
    if not raw:
        return Moments()
    n, m, v = raw.split(",")
    return Moments(int(n), float(m), float(v))


def _pack(m: Moments) -> str:
    return f"{m.n},{m.mean!r},{m.var!r}"


def load_state(fields: dict[str, str | None]) -> SeriesState:
    """A series' state from the hash fields read (slots not read stay empty)."""
    slots = [Moments()] * HOURS_PER_WEEK
    for name, raw in fields.items():
        if name.startswith("h") and raw:
            slots[int(name[1:])] = _moments(raw)
    return SeriesState(
        overall=_moments(fields.get("o")),
        slots=tuple(slots),
        resid=_moments(fields.get("r")),
    )


@dataclass(frozen=True)
class Found:
    series: str
    metric: str
    bucket: datetime
    value: Decimal
    judgment: Judgment


class AnomalyDetector:
    """Judges closed buckets after each batch; see the module docstring."""

    def __init__(
        self,
        settings: SiraSettings,
        pool: asyncpg.Pool,
        redis: Redis,
        producer: AIOKafkaProducer,
        anomaly_topic: str | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.producer = producer
        self.topic = anomaly_topic or str(getattr(settings, "anomaly_topic", "analytics.anomaly"))
        self.currency = str(getattr(settings, "reporting_currency", "USD"))
        self.clock = clock or (lambda: datetime.now(UTC))
        self.bucket = timedelta(minutes=settings.sira_bucket_minutes)
        # An hour-of-week slot sees 60/bucket buckets a week: it is warm after three weeks,
        # and its weight per bucket is set so that one week weighs what one bucket would
        # with hourly buckets (the defaults of DetectorConfig are per weekly observation).
        per_hour = 60 // settings.sira_bucket_minutes
        base = DetectorConfig()
        self.cfg = DetectorConfig(
            z_threshold=settings.sira_z_threshold,
            min_history=settings.sira_min_history,
            seasonal=settings.sira_seasonal,
            seasonal_min_history=base.seasonal_min_history * per_hour,
            seasonal_alpha=1 - (1 - base.seasonal_alpha) ** (1 / per_hour),
        )
        self._last_publish_check = 0.0
        self.outage = Outage("sira", "redis", log)

    # --- the consumer's entry point ---------------------------------------------------------

    async def on_batch(self, merchants: set[str | None], watermark: datetime) -> None:
        """Judge the time buckets that ``watermark`` (newest event time seen) has closed."""
        if not self.settings.sira_enabled:
            return
        try:
            await self._on_batch(merchants, watermark)
        except REDIS_DOWN as exc:
            # Redis away: the pointer did not move, so these buckets are judged once it is
            # back; the wait is one line per interval, not a traceback per batch.
            SIRA_FAILURES.inc()
            self.outage.failed(exc, "judging buckets")
            return
        self.outage.recovered()

    async def _on_batch(self, merchants: set[str | None], watermark: datetime) -> None:
        named = [m for m in merchants if m]
        if named:
            await self.redis.sadd(KNOWN, *named)  # type: ignore[misc]
        judged = await self._judge_closed(watermark)
        now = time.monotonic()
        if judged or now - self._last_publish_check >= PUBLISH_CHECK_SECONDS:
            self._last_publish_check = now
            await self.publish_pending()

    # --- judging ------------------------------------------------------------------------------

    def _floor(self, ts: datetime) -> datetime:
        step_s = int(self.bucket.total_seconds())
        epoch = int(ts.timestamp())
        return datetime.fromtimestamp(epoch - epoch % step_s, UTC)

    def newest_closed(self, watermark: datetime) -> datetime:
        """Start of the newest bucket whose end + grace the watermark has passed."""
        wm = min(watermark, self.clock())  # an event from the future closes nothing
        return self._floor(wm - timedelta(seconds=self.settings.sira_grace_seconds)) - self.bucket

    async def _judge_closed(self, watermark: datetime) -> bool:
        closed = self.newest_closed(watermark)
        pointer = _s(await self.redis.get(POINTER))
        if pointer is not None and float(pointer) >= closed.timestamp():
            return False
        token = uuid.uuid4().hex
        if not await self.redis.set(LOCK, token, nx=True, px=LOCK_MS):
            return False  # another consumer is judging these buckets
        try:
            return await self._judge_range(closed)
        finally:
            await self.redis.eval(_UNLOCK, 1, LOCK, token)  # type: ignore[misc]

    async def _judge_range(self, closed: datetime) -> bool:
        raw = _s(await self.redis.get(POINTER))
        horizon = self._floor(self.clock() - timedelta(hours=self.settings.sira_horizon_hours))
        if raw is None:
            # First run: learn the recent past without judging it.
            first, learn_only = closed - (BOOTSTRAP_BUCKETS - 1) * self.bucket, True
        else:
            first, learn_only = datetime.fromtimestamp(float(raw), UTC) + self.bucket, False
            if first > closed:
                return False
            # Back after a long stop: judge the most recent day, skip what is older.
            first = max(first, closed - (MAX_CATCHUP_BUCKETS - 1) * self.bucket)
        first = max(first, horizon)  # older minute data is gone: nothing to judge there
        buckets = []
        b = first
        while b <= closed:
            buckets.append(b)
            b += self.bucket
        found, states, stale = (
            await self._evaluate(buckets, learn_only) if buckets else ([], {}, [])
        )
        inserted = await self._store(found)
        await self._save(states, raw, closed)
        if stale:
            await self.redis.srem(KNOWN, *stale)  # type: ignore[misc]
        log.info(
            "SIRA %s %d bucket(s) up to %s: %d series, %d anomaly(ies), %d new",
            "learned" if learn_only else "judged",
            len(buckets),
            closed.isoformat(),
            len(states),
            len(found),
            inserted,
        )
        return True

    async def _values(
        self, first: datetime, end: datetime
    ) -> dict[tuple[str | None, datetime], tuple[Decimal, Decimal]]:
        """(merchant, bucket) -> (transactions, volume in the reporting currency)."""
        step_s = int(self.bucket.total_seconds())
        rows = await self.pool.fetch(
            f"""
            WITH g AS (
                SELECT a.merchant_id, a.currency,
                       to_timestamp(floor(extract(epoch FROM a.minute) / $3) * $3) AS bucket,
                       sum(a.tx_count) AS tx, sum(a.gross_volume_local) AS vol
                FROM txn_minute_agg a
                WHERE a.minute >= $1 AND a.minute < $2
                GROUP BY 1, 2, 3)
            SELECT g.merchant_id, g.bucket, sum(g.tx) AS tx,
                   coalesce(sum(g.vol * {fx.rate_expr("g", "$4")}), 0) AS volume,
                   bool_or({fx.rate_expr("g", "$4")} IS NULL) AS unconverted
            FROM g {fx.rate_join("g", "g.bucket", "$4")}
            GROUP BY 1, 2
            """,
            first,
            end,
            step_s,
            self.currency,
        )
        out: dict[tuple[str | None, datetime], tuple[Decimal, Decimal]] = {}
        missing = 0
        for r in rows:
            out[(r["merchant_id"], r["bucket"])] = (Decimal(r["tx"]), Decimal(r["volume"]))
            missing += bool(r["unconverted"])
        if missing:
            log.warning(
                "SIRA: %d merchant-bucket(s) have volume in a currency without an FX rate "
                "to %s; that volume is left out",
                missing,
                self.currency,
            )
        return out

    async def _evaluate(
        self, buckets: list[datetime], learn_only: bool
    ) -> tuple[list[Found], dict[str, SeriesState], list[str]]:
        values = await self._values(buckets[0], buckets[-1] + self.bucket)
        known = {_s(m) or "" for m in await self.redis.smembers(KNOWN)} - {""}  # type: ignore[misc]
        merchants = known | {m for m, _ in values if m}
        # Platform-wide totals include wallet-to-wallet transfers (merchant NULL).
        per: dict[tuple[str, datetime], tuple[Decimal, Decimal]] = {}
        for (m, b), (tx, vol) in values.items():
            if m:
                per[(m, b)] = (tx, vol)
            ptx, pvol = per.get((PLATFORM, b), (Decimal(0), Decimal(0)))
            per[(PLATFORM, b)] = (ptx + tx, pvol + vol)
        series = [PLATFORM, *sorted(merchants)]
        slots = sorted({how_slot(b) for b in buckets})
        fields = ["o", "r", *(f"h{s}" for s in slots)]
        pipe = self.redis.pipeline(transaction=False)
        keys = [(s, metric) for s in series for metric in METRICS]
        for s, metric in keys:
            pipe.hmget(baseline_key(s, metric), fields)
        loaded = await pipe.execute()
        states: dict[str, SeriesState] = {}
        found: list[Found] = []
        stale: list[str] = []
        zero = (Decimal(0), Decimal(0))
        for (s, metric), raw in zip(keys, loaded, strict=True):
            st = load_state({f: _s(v) for f, v in zip(fields, raw, strict=True)})
            for b in buckets:
                tx, vol = per.get((s, b), zero)
                value = tx if metric == "tx_count" else vol
                if st.overall.n == 0 and not value:
                    continue  # a baseline starts with the series' first activity, not zeros
                st, j = step(
                    st, how_slot(b), float(value), count=metric == "tx_count", cfg=self.cfg
                )
                if j is not None and j.anomalous and not learn_only:
                    found.append(Found(s, metric, b, value, j))
            if st.overall.n:
                states[baseline_key(s, metric)] = st
            elif metric == "tx_count" and s != PLATFORM:
                stale.append(s)  # no baseline left (expired) and no activity: forget it
        return found, states, stale

    async def _save(
        self, states: dict[str, SeriesState], pointer: str | None, closed: datetime
    ) -> None:
        """Baselines and the new pointer in one Redis transaction, if no one moved the pointer."""
        ttl = self.settings.sira_baseline_ttl_days * 86400
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(POINTER)
            if _s(await pipe.get(POINTER)) != pointer:
                log.info("SIRA: another consumer judged these buckets first")
                return
            pipe.multi()  # type: ignore[no-untyped-call]
            for key, st in states.items():
                mapping = {"o": _pack(st.overall), "r": _pack(st.resid)}
                mapping.update({f"h{i}": _pack(m) for i, m in enumerate(st.slots) if m.n})
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, ttl)
            pipe.set(POINTER, str(closed.timestamp()))
            try:
                await pipe.execute()
            except WatchError:
                log.info("SIRA: another consumer judged these buckets first")

    async def _store(self, found: list[Found]) -> int:
        """Insert the anomalies; log and count only those not already there."""
        if not found:
            return 0
        detected = self.clock()
        rows = await self.pool.fetch(
            """
            INSERT INTO analytics_anomalies (anomaly_key, merchant_id, metric, bucket, value,
                baseline, zscore, direction, detected_at, details)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                                 $5::numeric[], $6::numeric[], $7::float8[], $8::text[],
                                 $9::timestamptz[], $10::jsonb[])
            ON CONFLICT (anomaly_key) DO NOTHING
            RETURNING merchant_id, metric, bucket, value, baseline, zscore, direction
            """,
            [anomaly_key(f.series, f.metric, f.bucket) for f in found],
            [None if f.series == PLATFORM else f.series for f in found],
            [f.metric for f in found],
            [f.bucket for f in found],
            [f.value for f in found],
            [_dec(f.judgment.expected) for f in found],
            [round(f.judgment.zscore, 4) for f in found],
            [f.judgment.direction for f in found],
            [detected] * len(found),
            [
                json.dumps(
                    {
                        "sigma": round(f.judgment.sigma, 4),
                        "bucket_minutes": self.settings.sira_bucket_minutes,
                        "threshold": self.cfg.z_threshold,
                    }
                )
                for f in found
            ],
        )
        for r in rows:
            ANOMALIES.labels(r["metric"], r["direction"]).inc()
            log.warning(
                "Anomaly detected: merchant=%s metric=%s bucket=%s value=%s baseline=%s "
                "zscore=%.2f direction=%s",
                r["merchant_id"] or PLATFORM,
                r["metric"],
                r["bucket"].isoformat(),
                r["value"],
                r["baseline"],
                r["zscore"],
                r["direction"],
            )
        return len(rows)

    # --- publishing ---------------------------------------------------------------------------

    async def publish_pending(self, limit: int = 500) -> int:
        """Publish stored anomalies not yet on the topic; returns how many were published."""
        total = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    """
                    SELECT id, anomaly_key, merchant_id, metric, bucket, value, baseline,
                           zscore, direction, detected_at
                    FROM analytics_anomalies WHERE published_at IS NULL
                    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
                    """,
                    limit,
                )
                if not rows:
                    return total
                futures = [
                    await self.producer.send(
                        self.topic,
                        key=(r["merchant_id"] or PLATFORM).encode(),
                        value=json.dumps(message(r, self.settings.sira_bucket_minutes)).encode(),
                    )
                    for r in rows
                ]
                for f in futures:
                    await f
                await conn.execute(
                    "UPDATE analytics_anomalies SET published_at = now() WHERE id = ANY($1)",
                    [r["id"] for r in rows],
                )
                total += len(rows)


def _dec(x: float) -> Decimal:
    return Decimal(repr(round(x, 4))) if math.isfinite(x) else Decimal(0)


def message(r: Any, bucket_minutes: int) -> dict[str, Any]:
    """The ``analytics.anomaly`` record (amounts as decimal strings, never floats)."""
    return {
        "anomaly_key": r["anomaly_key"],
        "merchant_id": r["merchant_id"],
        "metric": r["metric"],
        "bucket": r["bucket"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "bucket_minutes": bucket_minutes,
        "value": str(r["value"]),
        "baseline": str(r["baseline"]),
        "zscore": r["zscore"],
        "direction": r["direction"],
        "detected_at": r["detected_at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
