"""Webhook delivery, off the evaluation path: drains the ``analytics_alert_notifications`` outbox.

The evaluator only inserts outbox rows (in its own transaction, so a notification exists if
and only if its state change committed). This worker claims due rows with
``FOR UPDATE SKIP LOCKED`` and a lease, POSTs them concurrently (at most
``ALERTS_NOTIFY_CONCURRENCY`` at once, each bounded by ``ALERTS_WEBHOOK_TIMEOUT_SECONDS``) and
records the outcome, so a slow or dead receiver only ever holds its own slot:

- 2xx: ``delivered_at`` set, the alert's ``notified_at`` set, history event ``notified``;
- anything else (status, refused connection, timeout): retried after
  ``min(cap, base * 2**(attempt-1))`` seconds with jitter (half to full delay), the error
  kept in the alert's ``notify_error``, ``analytics_alert_rule_failures_total{kind="webhook"}``
  incremented; after ``ALERTS_WEBHOOK_MAX_ATTEMPTS`` the row is given up (``failed_at``,
  event ``notify_failed``, ``kind="webhook_gave_up"``).

Every attempt increments the alert's ``notify_attempts``. Several notifiers (two evaluators)
never claim one row at once; the only duplicate possible is a process dying after a receiver
answered but before the outcome was written — the lease expires and the row is sent again with
the same ``X-Molam-Delivery`` id, for the receiver to drop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import httpx
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.alerts.payload import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.metrics import ALERT_RULE_FAILURES

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy

_CLAIM_SQL = """
UPDATE analytics_alert_notifications n
SET locked_until = now() + make_interval(secs => $2), attempts = n.attempts + 1
WHERE n.id IN (
    SELECT id FROM analytics_alert_notifications
    WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
      AND (locked_until IS NULL OR locked_until <= now())
      AND NOT (id = ANY($3::bigint[]))
    ORDER BY next_attempt_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING n.id, n.alert_id, n.url, n.status, n.payload::text AS body, n.attempts
"""


@dataclass(frozen=True)
class Delivery:
    id: int
    alert_id: int
    url: str
    status: str
    body: bytes
    attempt: int


def backoff_seconds(attempt: int, base: float, cap: float, rnd: float = 1.0) -> float:
    """Delay before the attempt after ``attempt`` (1-based): base, 2·base, 4·base… capped.

    ``rnd`` in [0, 1] picks within [half, full] of the delay (jitter, so receivers that come
    back are not hit by every sender in the same instant).
    """
    delay: float = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return delay * (0.5 + 0.5 * rnd)


class Notifier:
    """Claims due deliveries and posts them; ``run()`` forever, or ``drain_once()``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: AlertsSettings,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.alerts_webhook_timeout_seconds),
                follow_redirects=False,
                headers={"User-Agent": "molam-analytics-alerts"},
                limits=httpx.Limits(max_connections=self.settings.alerts_notify_concurrency),
            )
        return self._client

    async def aclose(self) -> None:
        for t in list(self._inflight):
            t.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look for due deliveries now (the evaluator just queued some)."""
        self._wake.set()

    @property
    def _lease_seconds(self) -> float:
        # Longer than one attempt can take, so a live sender never loses its row.
        return self.settings.alerts_webhook_timeout_seconds * 2 + 10

    async def claim(self, limit: int, exclude: Sequence[int] = ()) -> list[Delivery]:
        rows = await self.pool.fetch(_CLAIM_SQL, limit, self._lease_seconds, list(exclude))
        return [
            Delivery(
                r["id"], r["alert_id"], r["url"], r["status"], r["body"].encode(), r["attempts"]
            )
            for r in rows
        ]

    async def drain_once(self) -> int:
        """Send every delivery due now, one attempt each, concurrently; returns how many."""
        sem = asyncio.Semaphore(self.settings.alerts_notify_concurrency)
        total = 0

        async def one(d: Delivery) -> None:
            async with sem:
                await self.deliver(d)

        tried: list[int] = []
        while batch := await self.claim(self.settings.alerts_notify_concurrency * 4, tried):
            total += len(batch)
            tried.extend(d.id for d in batch)
            await asyncio.gather(*(one(d) for d in batch))
        return total

    async def run(self) -> None:
        """Keep every slot busy with due deliveries until cancelled."""
        try:
            while True:
                free = self.settings.alerts_notify_concurrency - len(self._inflight)
                claimed: list[Delivery] = []
                if free > 0:
                    try:
                        claimed = await self.claim(free)
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("notifier cannot read the outbox: %s", exc)
                for d in claimed:
                    task = asyncio.create_task(self.deliver(d), name=f"webhook-{d.id}")
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                if claimed and len(claimed) == free:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._wake.clear()
                waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
                try:
                    await asyncio.wait(
                        waiters | set(self._inflight),
                        timeout=self.settings.alerts_notify_poll_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            await self.aclose()

    async def deliver(self, d: Delivery) -> None:
        """One attempt: POST, then record success, retry time or giving up."""
        error = await self._post(d)
        try:
            await self._record(d, error)
        except (OSError, asyncpg.PostgresError) as exc:
            # The lease expires and the row is tried again; nothing is lost.
            log.warning("could not record webhook delivery %d: %s", d.id, exc)

    async def _post(self, d: Delivery) -> str | None:
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: str(d.id)}
        secret = self.settings.webhook_secret
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, d.body)
        try:
            resp = await self.client.post(d.url, content=d.body, headers=headers)
        except httpx.TimeoutException:
            return f"timeout after {self.settings.alerts_webhook_timeout_seconds:g}s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if 200 <= resp.status_code < 300:
            return None
        return f"HTTP {resp.status_code}"

    async def _record(self, d: Delivery, error: str | None) -> None:
        s = self.settings
        async with self.pool.acquire() as conn, conn.transaction():
            if error is None:
                await conn.execute(
                    """
                    UPDATE analytics_alert_notifications
                    SET delivered_at = now(), locked_until = NULL, last_error = NULL
                    WHERE id = $1
                    """,
                    d.id,
                )
                await conn.execute(
                    """
                    UPDATE analytics_alerts
                    SET notified_at = now(), notify_attempts = notify_attempts + 1,
                        notify_error = CASE WHEN notify_error LIKE $2 || ': %' THEN NULL
                                            ELSE notify_error END
                    WHERE id = $1
                    """,
                    d.alert_id,
                    d.url,
                )
                await _event(conn, d, "notified", None)
                log.info(
                    "webhook delivered: alert=%d status=%s url=%s attempt=%d",
                    d.alert_id,
                    d.status,
                    d.url,
                    d.attempt,
                )
                return
            give_up = d.attempt >= s.alerts_webhook_max_attempts
            delay = backoff_seconds(
                d.attempt,
                s.alerts_webhook_backoff_base_seconds,
                s.alerts_webhook_backoff_cap_seconds,
                random.random(),
            )
            await conn.execute(
                """
                UPDATE analytics_alert_notifications
                SET last_error = $2, locked_until = NULL,
                    next_attempt_at = now() + make_interval(secs => $3),
                    failed_at = CASE WHEN $4 THEN now() END
                WHERE id = $1
                """,
                d.id,
                error,
                delay,
                give_up,
            )
            await conn.execute(
                """
                UPDATE analytics_alerts
                SET notify_attempts = notify_attempts + 1, notify_error = $2 || ': ' || $3
                WHERE id = $1
                """,
                d.alert_id,
                d.url,
                error,
            )
            ALERT_RULE_FAILURES.labels("webhook").inc()
            if give_up:
                ALERT_RULE_FAILURES.labels("webhook_gave_up").inc()
                await _event(conn, d, "notify_failed", error)
                log.error(
                    "webhook given up after %d attempts: alert=%d status=%s url=%s error=%s",
                    d.attempt,
                    d.alert_id,
                    d.status,
                    d.url,
                    error,
                )
            else:
                log.warning(
                    "webhook failed (attempt %d/%d, retry in %.1fs): alert=%d url=%s error=%s",
                    d.attempt,
                    s.alerts_webhook_max_attempts,
                    delay,
                    d.alert_id,
                    d.url,
                    error,
                )


async def _event(conn: Conn, d: Delivery, event: str, error: str | None) -> None:
    await conn.execute(
        """
        INSERT INTO analytics_alert_events (alert_id, event, actor, detail)
        VALUES ($1, $2, 'notifier', jsonb_strip_nulls(jsonb_build_object(
            'url', $3::text, 'status', $4::text, 'attempts', $5::int, 'error', $6::text)))
        """,
        d.alert_id,
        event,
        d.url,
        d.status,
        d.attempt,
        error,
    )
