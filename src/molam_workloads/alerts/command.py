"""``molam-analytics alerts [--once] [--interval SECONDS]``: the alerts evaluator, and
``molam-analytics alerts backtest NAME [--from T] [--to T] [--json]``: when a stored rule would
have fired and resolved over a past range (``core.backtest``).

The loop runs four independent tasks on one pool: evaluation cycles every
``ALERTS_INTERVAL_SECONDS``, the webhook notifier (so a slow receiver never delays a cycle),
the Alertmanager pusher and housekeeping. ``--once`` runs one cycle, sends what it queued (one
attempt each; failures stay queued for the next run), pushes one round to the Alertmanagers,
housekeeps once and exits: scheduled as a job, it keeps the
tables bounded like the loop does. Metrics (and ``/health``: what the loop waits for) are
served on ``METRICS_PORT`` (9103) by the loop only, so several ``--once`` runs never fight over
the port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from molam_workloads.alerts.alertmanager import AlertmanagerPusher
from molam_workloads.alerts.evaluator import run_cycle
from molam_workloads.alerts.housekeeping import housekeep
from molam_workloads.alerts.notifier import Notifier
from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.backtest import backtest, load_rule
from molam_workloads.core.db import create_pool
from molam_workloads.core.errors import ConfigError
from molam_workloads.core.faults import POSTGRES_DOWN, health, outage
from molam_workloads.core.metrics import ALERT_RULE_FAILURES, observe_pool, serve_metrics
from molam_workloads.core.settings import load_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once", action="store_true", help="run one evaluation cycle, send its webhooks, exit"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between cycles (default: ALERTS_INTERVAL_SECONDS, 60)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    bt = sub.add_parser(
        "backtest", help="replay a stored rule over the aggregates: when it would have fired"
    )
    bt.add_argument("name", help="the rule's name (<namespace>/<name> for a custom resource)")
    bt.add_argument(
        "--from", dest="start", type=_instant, default=None, help="RFC 3339 (default: 7 days ago)"
    )
    bt.add_argument("--to", dest="end", type=_instant, default=None, help="RFC 3339 (default: now)")
    bt.add_argument("--json", action="store_true", help="print the result as JSON")


def _instant(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def run_backtest(args: argparse.Namespace, settings: AlertsSettings) -> int:
    end = args.end or datetime.now(UTC)
    start = args.start or end - timedelta(days=7)
    async with create_pool(settings, max_size=1) as pool, pool.acquire() as conn:
        rule = await load_rule(conn, args.name)
        if rule is None:
            raise ConfigError(f"no alert rule named {args.name!r}")
        try:
            result = await backtest(
                conn, rule, start, end, reporting_currency=settings.reporting_currency
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if args.json:
        print(json.dumps({"rule": result.rule, **result.document()}, indent=2))
        return 0
    print(
        f"{result.rule}: {result.evaluations} evaluation(s) from {result.start:%Y-%m-%d %H:%M}"
        f" to {result.end:%Y-%m-%d %H:%M} UTC, {result.no_data} without data,"
        f" {len(result.firings)} firing(s) ({result.duration_ms:.0f} ms)"
    )
    for f in result.firings:
        until = f"{f.resolved_at:%Y-%m-%d %H:%M}" if f.resolved_at else "still firing"
        print(
            f"  fired {f.fired_at:%Y-%m-%d %H:%M} -> {until}  value {f.value}  peak {f.peak}"
            f"  (pending since {f.pending_since:%H:%M}, per {f.resolution})"
        )
    return 0


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(AlertsSettings)
    if args.action == "backtest":
        return await run_backtest(args, settings)
    if args.interval is not None:
        if args.interval <= 0:
            raise ConfigError("--interval must be a positive number of seconds")
        settings = settings.model_copy(update={"alerts_interval_seconds": args.interval})
    if settings.webhook_secret is None:
        log.warning("ALERT_WEBHOOK_SECRET is not set: webhooks are sent unsigned")
    async with create_pool(settings, max_size=min(settings.db_pool_max, 4)) as pool:
        if args.once:
            report = await run_cycle(pool, settings)
            notifier = Notifier(pool, settings)
            pusher = AlertmanagerPusher(pool, settings)
            try:
                sent = await notifier.drain_once()
                await pusher.push_once()
            finally:
                await notifier.aclose()
                await pusher.aclose()
            print(
                f"evaluated {report.rules} rule(s): {report.firing} firing, "
                f"{report.pending} pending, {len(report.fired)} fired, "
                f"{len(report.resolved)} resolved, {sent} webhook attempt(s)"
                if report.ran
                else "another evaluator is running a cycle; nothing done"
            )
            # Batched deletes: a concurrent run or loop deleting the same rows is harmless.
            kept = await housekeep(pool, settings)
            print(
                f"housekeeping: {kept.alerts_deleted} resolved alert(s) and"
                f" {kept.minute_rows_deleted} txn_minute_agg row(s) deleted"
            )
            return 0
        # /health beside /metrics: what the loop waits for (always 200: an outage of
        # PostgreSQL is no reason for Kubernetes to restart the evaluator).
        serve_metrics(
            settings.metrics_port, settings.metrics_address, health=lambda: health("alerts")
        )
        await _until_signalled(loop(pool, settings))
    log.info("alerts evaluator stopped cleanly")
    return 0


async def _until_signalled(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until SIGTERM / SIGINT (Kubernetes stops pods with SIGTERM), then cancel
    it and wait for its tasks to finish."""
    task = asyncio.create_task(work)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.remove_signal_handler(sig)


async def loop(pool: asyncpg.Pool, settings: AlertsSettings) -> None:
    """Cycles, notifier and housekeeping until cancelled; every task cancelled and awaited.

    While PostgreSQL is away (down, restarting) every task waits it out: one shared
    ``core.faults.outage("alerts", "postgresql")`` reports the wait, and cycles are retried
    with its capped backoff rather than once per interval, so evaluation resumes within
    seconds of PostgreSQL's return."""
    database = outage("alerts", "postgresql")
    notifier = Notifier(pool, settings)
    notify_task = asyncio.create_task(notifier.run(), name="alerts-notifier")
    pusher = AlertmanagerPusher(pool, settings)
    push_task = asyncio.create_task(pusher.run(), name="alerts-alertmanager")
    house_task = asyncio.create_task(_housekeeping(pool, settings), name="alerts-housekeeping")
    log.info(
        "alerts evaluator started: interval=%gs, reporting currency %s",
        settings.alerts_interval_seconds,
        settings.reporting_currency,
    )
    try:
        while True:
            started = time.monotonic()
            wait = settings.alerts_interval_seconds
            try:
                report = await run_cycle(pool, settings)
                if report.notifications:
                    notifier.wake()
                if report.fired or report.resolved:
                    pusher.wake()
            except POSTGRES_DOWN as exc:
                ALERT_RULE_FAILURES.labels("evaluation").inc()
                database.failed(exc, "evaluation cycle")
                wait = min(wait, database.delay())
            except asyncpg.PostgresError as exc:
                ALERT_RULE_FAILURES.labels("evaluation").inc()
                log.error("alerts cycle failed: %s", exc)
            else:
                database.recovered()
            observe_pool(pool)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(wait - elapsed, 0.0))
    finally:
        for t in (notify_task, push_task, house_task):
            t.cancel()
        await asyncio.gather(notify_task, push_task, house_task, return_exceptions=True)


async def _housekeeping(pool: asyncpg.Pool, settings: AlertsSettings) -> None:
    database = outage("alerts", "postgresql")
    while True:
        try:
            await housekeep(pool, settings)
        except POSTGRES_DOWN as exc:
            ALERT_RULE_FAILURES.labels("housekeeping").inc()
            database.failed(exc, "housekeeping")
        except asyncpg.PostgresError as exc:
            ALERT_RULE_FAILURES.labels("housekeeping").inc()
            log.error("housekeeping failed: %s", exc)
        await asyncio.sleep(settings.alerts_housekeeping_interval_seconds)
