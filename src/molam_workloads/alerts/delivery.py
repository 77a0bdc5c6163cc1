"""One notification attempt, timed, and the ledger that keeps every attempt.

Webhook deliveries, Alertmanager pushes and test notifications all go through ``post_once``
and end as rows of ``analytics_alert_deliveries`` (``record``), which the API lists under
``GET /v1/alerts/{id}/notifications``. A row names its destination by host only: the path and
query of a webhook URL often carry a token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import httpx
from asyncpg.pool import PoolConnectionProxy

from molam_workloads.alerts.egress import DestinationRefused, url_host

Conn = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


@dataclass(frozen=True)
class Outcome:
    """What one POST did; ``error`` is None exactly when the receiver answered 2xx."""

    destination: str  # host[:port]
    status_code: int | None
    latency_ms: float
    error: str | None
    refused: bool = False  # by ALERT_WEBHOOK_ALLOW: retrying cannot help

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_json(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "ok": self.ok,
            "status_code": self.status_code,
            "latency_ms": round(self.latency_ms, 1),
            "error": self.error,
        }


def _describe(exc: httpx.HTTPError, url: str, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout after {timeout:g}s"
    text = str(exc).replace(url, url_host(url))  # never the full URL, even in an error
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
) -> Outcome:
    """POST ``body`` once; any answer but 2xx, and any transport error, is a failure."""
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    refused = False
    try:
        resp = await client.post(url, content=body, headers=dict(headers), timeout=timeout)
        status = resp.status_code
        if not 200 <= status < 300:
            # The receiver's reason, shortened to one line (Alertmanager explains a 400 there).
            reason = " ".join(resp.text.split())[:200]
            error = f"HTTP {status}: {reason}" if reason else f"HTTP {status}"
    except httpx.HTTPError as exc:
        refused = isinstance(exc.__cause__, DestinationRefused)
        error = f"refused: {exc}" if refused else _describe(exc, url, timeout)
    except httpx.InvalidURL as exc:  # not an HTTPError: it would stop the sender's task
        error = f"invalid URL: {str(exc).replace(url, url_host(url))}"
    latency = (time.perf_counter() - started) * 1000
    return Outcome(url_host(url), status, latency, error, refused)


@dataclass(frozen=True)
class Attempt:
    """One ledger row: an outcome, for which alert (or test) and which try."""

    kind: str  # webhook | alertmanager
    status: str  # firing | resolved | test
    rule_name: str
    attempt: int
    outcome: Outcome
    alert_id: int | None = None
    test_id: int | None = None


async def record(conn: Conn, attempts: Sequence[Attempt]) -> None:
    """Write the attempts in one statement."""
    if not attempts:
        return
    await conn.execute(
        """
        INSERT INTO analytics_alert_deliveries (
            alert_id, test_id, rule_name, kind, status, destination, attempt, status_code,
            latency_ms, ok, error)
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::int[], $8::int[], $9::float8[], $10::bool[],
                             $11::text[])
        """,
        [a.alert_id for a in attempts],
        [a.test_id for a in attempts],
        [a.rule_name for a in attempts],
        [a.kind for a in attempts],
        [a.status for a in attempts],
        [a.outcome.destination for a in attempts],
        [a.attempt for a in attempts],
        [a.outcome.status_code for a in attempts],
        [a.outcome.latency_ms for a in attempts],
        [a.outcome.ok for a in attempts],
        [a.outcome.error for a in attempts],
    )
