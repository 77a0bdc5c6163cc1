"""Alertmanager as a destination: open alerts pushed to ``POST /api/v2/alerts`` as Prometheus
pushes them.

Alertmanager holds *state*, not events: it resolves an alert at its ``endsAt``, or
``resolve_timeout`` after the last post when there is none. So the pusher does not post on a
change of state only. Every ``ALERTMANAGER_RESEND_SECONDS`` (at most a minute, Prometheus's
``resend_delay``), and at once after a cycle that opened or closed alerts, it posts:

- every open (firing or acknowledged) alert with ``endsAt`` four times the longer of the
  evaluation interval and the resend delay ahead, so it stays active whatever
  ``resolve_timeout`` is, and lapses by itself if the evaluator dies;
- every alert resolved in the last ``ALERTMANAGER_RESOLVED_RESEND_MINUTES`` with ``endsAt`` =
  the moment it cleared, so an Alertmanager that was down then still learns it.

Each alert goes to its rule's ``notify.alertmanagers`` and to ``ALERTMANAGER_URLS``; each
Alertmanager of an HA cluster is posted to (they deduplicate). Alertmanagers are served
concurrently, each by its own task: retries of one that is down (capped backoff, at most
``ALERTMANAGER_MAX_ATTEMPTS`` per round, never past the next round) delay no other, and a
round still busy with one is not stacked on. Each attempt is a ledger row per alert posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx

from molam_workloads.alerts.delivery import Attempt, Outcome, post_once, record
from molam_workloads.alerts.egress import LazyClient, guarded_client, url_host
from molam_workloads.alerts.notifier import backoff_seconds
from molam_workloads.alerts.payload import alertmanager_alert, firing_ends_at
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.faults import POSTGRES_DOWN, outage
from molam_workloads.core.metrics import ALERT_RULE_FAILURES

log = logging.getLogger(__name__)

BATCH = 64  # alerts per POST, as Prometheus's notifier batches them
API_PATH = "/api/v2/alerts"

_ALERTS_SQL = """
SELECT id, rule_name, state, labels::text, annotations::text, started_at, resolved_at,
       alertmanagers::text
FROM analytics_alerts
WHERE (state IN ('firing', 'acknowledged') OR (state = 'resolved' AND resolved_at > $1))
  AND ($2 OR alertmanagers <> '[]'::jsonb)
ORDER BY id
"""


@dataclass(frozen=True)
class Pushed:
    alert_id: int
    rule_name: str
    status: str  # firing | resolved
    doc: dict[str, Any]


def generator_url(external_url: str, rule_name: str) -> str:
    """The rule in the API (``/v1/alert-rules/<name>``), what Alertmanager links back to."""
    return f"{external_url.rstrip('/')}/v1/alert-rules/{quote(rule_name, safe='')}"


def plan(
    rows: list[asyncpg.Record], settings: AlertsSettings, now: datetime
) -> dict[str, list[Pushed]]:
    """Alertmanager base URL -> the alerts to post to it now (pure but for the rows)."""
    defaults = settings.alertmanagers
    ends = firing_ends_at(
        now, settings.alerts_interval_seconds, settings.alertmanager_resend_seconds
    )
    out: dict[str, list[Pushed]] = defaultdict(list)
    for r in rows:
        resolved = r["state"] == "resolved"
        doc = alertmanager_alert(
            labels=json.loads(r["labels"]),
            annotations=json.loads(r["annotations"]),
            starts_at=r["started_at"],
            ends_at=r["resolved_at"] if resolved else ends,
            generator_url=generator_url(settings.alerts_external_url, r["rule_name"]),
        )
        p = Pushed(r["id"], r["rule_name"], "resolved" if resolved else "firing", doc)
        own = [u.rstrip("/") for u in json.loads(r["alertmanagers"])]
        for url in dict.fromkeys([*own, *defaults]):
            out[url].append(p)
    return out


def _log_crash(task: asyncio.Task[list[Outcome]]) -> None:
    """A round that died of a bug is logged, not lost as an unretrieved task exception."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        ALERT_RULE_FAILURES.labels("alertmanager").inc()
        log.error("Alertmanager round failed: %r", exc, exc_info=exc)


class AlertmanagerPusher:
    """Posts open and lately resolved alerts to every Alertmanager; ``run()`` or
    ``push_once()``."""

    def __init__(
        self, pool: asyncpg.Pool, settings: AlertsSettings, client: httpx.AsyncClient | None = None
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._http = LazyClient(
            client,
            lambda: guarded_client(
                self.settings.egress_policy(),
                timeout=self.settings.alertmanager_timeout_seconds,
                max_connections=64,
            ),
        )
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[list[Outcome]]] = {}
        self._database = outage("alerts", "postgresql")

    @property
    def client(self) -> httpx.AsyncClient:
        return self._http.get()

    def wake(self) -> None:
        """Post now (a cycle just opened or closed alerts)."""
        self._wake.set()

    async def aclose(self) -> None:
        tasks = list(self._busy.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._busy.clear()
        await self._http.aclose()

    async def run(self) -> None:
        """A round every resend delay, or sooner when woken, until cancelled."""
        try:
            while True:
                self._wake.clear()
                wait = self.settings.alertmanager_resend_seconds
                try:
                    await self.start_round()
                except POSTGRES_DOWN as exc:
                    ALERT_RULE_FAILURES.labels("alertmanager").inc()
                    self._database.failed(exc, "reading the alerts to push to Alertmanager")
                    wait = min(wait, self._database.delay())
                except asyncpg.PostgresError as exc:
                    ALERT_RULE_FAILURES.labels("alertmanager").inc()
                    log.warning("cannot read the alerts to push to Alertmanager: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
        finally:
            await self.aclose()

    async def start_round(self, now: datetime | None = None) -> list[asyncio.Task[list[Outcome]]]:
        """Read what to post and start one task per Alertmanager not still busy."""
        now = now or datetime.now(UTC)
        s = self.settings
        if not s.alertmanagers and not await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM analytics_alerts WHERE alertmanagers <> '[]'::jsonb)"
        ):
            return []
        rows = await self.pool.fetch(
            _ALERTS_SQL,
            now - timedelta(minutes=s.alertmanager_resolved_resend_minutes),
            bool(s.alertmanagers),
        )
        started = []
        # A deadline before the next round: a round never overlaps the next for one target.
        deadline = asyncio.get_running_loop().time() + s.alertmanager_resend_seconds
        for url, alerts in plan(list(rows), s, now).items():
            if url in self._busy and not self._busy[url].done():
                log.info("Alertmanager %s: previous round still running; skipped", url_host(url))
                continue
            task = asyncio.create_task(self._push(url, alerts, deadline), name=f"am-{url}")
            task.add_done_callback(_log_crash)
            self._busy[url] = task
            started.append(task)
        return started

    async def push_once(self, now: datetime | None = None) -> list[Outcome]:
        """One round, waited for: every Alertmanager's final outcome per batch."""
        tasks = await self.start_round(now)
        results = await asyncio.gather(*tasks)
        return [o for r in results for o in r]

    async def _push(self, url: str, alerts: list[Pushed], deadline: float) -> list[Outcome]:
        outcomes = []
        for i in range(0, len(alerts), BATCH):
            outcomes.append(await self._post_batch(url, alerts[i : i + BATCH], deadline))
        return outcomes

    async def _post_batch(self, url: str, batch: list[Pushed], deadline: float) -> Outcome:
        s = self.settings
        body = json.dumps([p.doc for p in batch], separators=(",", ":")).encode()
        loop = asyncio.get_running_loop()
        outcome: Outcome | None = None
        for attempt in range(1, s.alertmanager_max_attempts + 1):
            outcome = await post_once(
                self.client,
                url + API_PATH,
                body,
                {"Content-Type": "application/json"},
                s.alertmanager_timeout_seconds,
            )
            try:
                await record(
                    self.pool,
                    [
                        Attempt("alertmanager", p.status, p.rule_name, attempt, outcome, p.alert_id)
                        for p in batch
                    ],
                )
            except POSTGRES_DOWN as exc:
                self._database.failed(exc, "recording an Alertmanager delivery")
            except asyncpg.PostgresError as exc:
                log.warning("could not record Alertmanager delivery: %s", exc)
            if outcome.ok:
                return outcome
            ALERT_RULE_FAILURES.labels("alertmanager").inc()
            delay = backoff_seconds(
                attempt, 0.5, s.alertmanager_resend_seconds / 2, random.random()
            )
            last = (
                outcome.refused
                or attempt == s.alertmanager_max_attempts
                or loop.time() + delay >= deadline
            )
            log.warning(
                "Alertmanager %s: %d alert(s) not posted (attempt %d%s): %s",
                outcome.destination,
                len(batch),
                attempt,
                ", next round retries" if last else f", retry in {delay:.1f}s",
                outcome.error,
            )
            if last:
                break
            await asyncio.sleep(delay)
        assert outcome is not None
        return outcome
