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

Every attempt increments the alert's ``notify_attempts`` and is a row of the delivery ledger
(``delivery.record``). Connections go only where ``ALERT_WEBHOOK_ALLOW`` allows
(``egress``); a refused destination fails like a refused connection, visibly. Each webhook is
signed with its own secret, else ``ALERT_WEBHOOK_SECRET``. The same worker answers the API's
test requests (``analytics_alert_tests``): one attempt per destination of the rule, outcomes
written back for the API to return.

Every attempt increments the alert's ``notify_attempts``. Several notifiers (two evaluators)
never claim one row at once; the only duplicate possible is a process dying after a receiver
answered but before the outcome was written — the lease expires and the row is sent again with
the same ``X-Molam-Delivery`` id, for the receiver to drop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.alerts.delivery import Attempt, Outcome, post_once, record
from molam_workloads.alerts.egress import LazyClient, guarded_client, url_host
from molam_workloads.alerts.payload import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    alert_labels,
    alertmanager_alert,
    rule_scope,
    sign,
    webhook_payload,
)
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.faults import POSTGRES_DOWN, outage
from molam_workloads.core.metrics import ALERT_RULE_FAILURES

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | PoolConnectionProxy

_CLAIM_SQL = """
UPDATE analytics_alert_notifications n
SET locked_until = now() + make_interval(secs => $2), attempts = n.attempts + 1
FROM analytics_alerts a
WHERE a.id = n.alert_id AND n.id IN (
    SELECT id FROM analytics_alert_notifications
    WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
      AND (locked_until IS NULL OR locked_until <= now())
      AND NOT (id = ANY($3::bigint[]))
    ORDER BY next_attempt_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING n.id, n.alert_id, n.url, n.status, n.payload::text AS body, n.attempts,
          a.rule_name,
          (SELECT h->>'secret' FROM jsonb_array_elements(a.webhooks) h
           WHERE h->>'url' = n.url AND h ? 'secret' LIMIT 1) AS secret
"""

_CLAIM_TESTS_SQL = """
UPDATE analytics_alert_tests t SET locked_until = now() + make_interval(secs => $2)
WHERE t.id IN (
    SELECT id FROM analytics_alert_tests
    WHERE done_at IS NULL AND (locked_until IS NULL OR locked_until <= now())
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING t.id, t.rule_name
"""


@dataclass(frozen=True)
class Delivery:
    id: int
    alert_id: int
    url: str
    status: str
    body: bytes
    attempt: int
    rule_name: str = ""
    secret: str | None = None


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
        self._http = LazyClient(
            client,
            lambda: guarded_client(
                self.settings.egress_policy(),
                timeout=self.settings.alerts_webhook_timeout_seconds,
                max_connections=self.settings.alerts_notify_concurrency,
            ),
        )
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._tests: asyncio.Task[int] | None = None
        self._database = outage("alerts", "postgresql")

    @property
    def client(self) -> httpx.AsyncClient:
        return self._http.get()

    async def aclose(self) -> None:
        tasks = [*self._inflight, *([self._tests] if self._tests else [])]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tests = None
        await self._http.aclose()

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
                r["id"],
                r["alert_id"],
                r["url"],
                r["status"],
                r["body"].encode(),
                r["attempts"],
                r["rule_name"],
                r["secret"],
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
        await self.run_tests()
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
                    except POSTGRES_DOWN as exc:
                        self._database.failed(exc, "notifier reading the outbox")
                    except asyncpg.PostgresError as exc:
                        log.warning("notifier cannot read the outbox: %s", exc)
                    else:
                        self._database.recovered()
                for d in claimed:
                    task = asyncio.create_task(self.deliver(d), name=f"webhook-{d.id}")
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                if not self._tests or self._tests.done():
                    # Test requests from the API, beside deliveries: one at a time is plenty.
                    self._tests = asyncio.create_task(self.run_tests(), name="alert-tests")
                if claimed and len(claimed) == free:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                self._wake.clear()
                waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
                try:
                    await asyncio.wait(
                        waiters | set(self._inflight),
                        # While PostgreSQL is away: its capped backoff, not every poll.
                        timeout=max(
                            self.settings.alerts_notify_poll_seconds, self._database.delay()
                        ),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            await self.aclose()

    async def deliver(self, d: Delivery) -> None:
        """One attempt: POST, then record success, retry time or giving up."""
        outcome = await self._post(d)
        try:
            await self._record(d, outcome)
        except POSTGRES_DOWN as exc:
            # The lease expires and the row is tried again; nothing is lost.
            self._database.failed(exc, f"recording webhook delivery {d.id}")
        except asyncpg.PostgresError as exc:
            log.warning("could not record webhook delivery %d: %s", d.id, exc)

    def _headers(self, body: bytes, secret: str | None, delivery: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery}
        key = secret.encode() if secret else self.settings.webhook_secret
        if key:
            headers[SIGNATURE_HEADER] = sign(key, body)
        return headers

    async def _post(self, d: Delivery) -> Outcome:
        return await post_once(
            self.client,
            d.url,
            d.body,
            self._headers(d.body, d.secret, str(d.id)),
            self.settings.alerts_webhook_timeout_seconds,
        )

    async def _record(self, d: Delivery, outcome: Outcome) -> None:
        s = self.settings
        error = outcome.error
        host = outcome.destination
        async with self.pool.acquire() as conn, conn.transaction():
            await record(
                conn, [Attempt("webhook", d.status, d.rule_name, d.attempt, outcome, d.alert_id)]
            )
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
                    host,
                )
                await _event(conn, d, "notified", None)
                log.info(
                    "webhook delivered: alert=%d status=%s host=%s attempt=%d",
                    d.alert_id,
                    d.status,
                    host,
                    d.attempt,
                )
                return
            give_up = d.attempt >= s.alerts_webhook_max_attempts or outcome.refused
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
                host,
                error,
            )
            ALERT_RULE_FAILURES.labels("webhook").inc()
            if give_up:
                ALERT_RULE_FAILURES.labels("webhook_gave_up").inc()
                await _event(conn, d, "notify_failed", error)
                log.error(
                    "webhook given up after %d attempts: alert=%d status=%s host=%s error=%s",
                    d.attempt,
                    d.alert_id,
                    d.status,
                    host,
                    error,
                )
            else:
                log.warning(
                    "webhook failed (attempt %d/%d, retry in %.1fs): alert=%d host=%s error=%s",
                    d.attempt,
                    s.alerts_webhook_max_attempts,
                    delay,
                    d.alert_id,
                    host,
                    error,
                )

    async def run_tests(self) -> int:
        """Answer the API's pending test requests; returns how many."""
        try:
            claimed = await self.pool.fetch(_CLAIM_TESTS_SQL, 8, self._lease_seconds)
        except POSTGRES_DOWN as exc:
            self._database.failed(exc, "notifier reading the test requests")
            return 0
        except asyncpg.PostgresError as exc:
            log.warning("notifier cannot read the test requests: %s", exc)
            return 0
        for t in claimed:
            try:
                results = await self.send_test(t["id"], t["rule_name"])
                await self.pool.execute(
                    "UPDATE analytics_alert_tests SET done_at = now(), results = $2::jsonb "
                    "WHERE id = $1",
                    t["id"],
                    json.dumps(results),
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The lease expires and the test is sent again; the API is still waiting.
                log.warning("could not answer test %d of rule %s: %s", t["id"], t["rule_name"], exc)
        return len(claimed)

    async def send_test(self, test_id: int, rule_name: str) -> list[dict[str, Any]]:
        """One test notification to each destination of the rule, concurrently, once each."""
        rule = await self.pool.fetchrow(
            """
            SELECT name, source, metric, severity, scope_merchant_id, scope_country,
                   scope_currency, scope_channel, webhooks::text, alertmanagers::text, runbook_url
            FROM analytics_alert_rules WHERE name = $1
            """,
            rule_name,
        )
        if rule is None:
            return []
        now = datetime.now(UTC)
        labels = alert_labels(
            rule_name=rule["name"],
            source=rule["source"],
            metric=rule["metric"],
            severity=rule["severity"],
            scope=rule_scope(rule),
        ) | {"test": "true"}
        annotations = {
            "summary": f"Test notification of alert rule {rule_name}",
            "description": "Sent on request (POST /v1/alert-rules/{name}/test); nothing fired.",
        }
        if rule["runbook_url"]:
            annotations["runbook_url"] = rule["runbook_url"]
        s = self.settings
        webhook_body = json.dumps(
            webhook_payload(
                status="firing",
                alert_id=0,
                labels=labels,
                annotations=annotations,
                starts_at=now,
                ends_at=None,
                external_url=s.alerts_external_url,
                receiver=s.alerts_receiver,
            ),
            separators=(",", ":"),
        ).encode()
        am_body = json.dumps(
            [
                alertmanager_alert(
                    labels=labels,
                    annotations=annotations,
                    starts_at=now,
                    ends_at=now + timedelta(minutes=5),
                    generator_url=f"{s.alerts_external_url.rstrip('/')}/v1/alert-rules",
                )
            ],
            separators=(",", ":"),
        ).encode()
        sends: list[tuple[str, Any]] = []
        for hook in {h["url"]: h for h in json.loads(rule["webhooks"])}.values():
            headers = self._headers(webhook_body, hook.get("secret"), f"test-{test_id}")
            sends.append(
                (
                    "webhook",
                    post_once(
                        self.client,
                        hook["url"],
                        webhook_body,
                        headers,
                        s.alerts_webhook_timeout_seconds,
                    ),
                )
            )
        ams = [u.rstrip("/") for u in json.loads(rule["alertmanagers"])]
        for am in dict.fromkeys([*ams, *s.alertmanagers]):
            sends.append(
                (
                    "alertmanager",
                    post_once(
                        self.client,
                        am + "/api/v2/alerts",
                        am_body,
                        {"Content-Type": "application/json"},
                        s.alertmanager_timeout_seconds,
                    ),
                )
            )
        outcomes = await asyncio.gather(*(c for _, c in sends))
        kinds = [k for k, _ in sends]
        await record(
            self.pool,
            [
                Attempt(k, "test", rule_name, 1, o, test_id=test_id)
                for k, o in zip(kinds, outcomes, strict=True)
            ],
        )
        return [{"kind": k, **o.as_json()} for k, o in zip(kinds, outcomes, strict=True)]


async def _event(conn: Conn, d: Delivery, event: str, error: str | None) -> None:
    await conn.execute(
        """
        INSERT INTO analytics_alert_events (alert_id, event, actor, detail)
        VALUES ($1, $2, 'notifier', jsonb_strip_nulls(jsonb_build_object(
            'host', $3::text, 'status', $4::text, 'attempts', $5::int, 'error', $6::text)))
        """,
        d.alert_id,
        event,
        url_host(d.url),
        d.status,
        d.attempt,
        error,
    )
