"""Waiting out a backing service: one ``Outage`` per (component, service) says what is awaited.

A service that is down makes every call fail, and a component that logged each failure wrote
hundreds of tracebacks a minute (SIRA: 873 in 30 s of Redis being down). An ``Outage`` logs the
first failure at once, then at most once per ``every`` seconds with the count since, and once
more when the service answers again; meanwhile ``analytics_waiting_for{component, service}`` is
1 and ``analytics_dependency_errors_total`` counts each failure. ``backoff()`` is the capped
delay before the next attempt. docs/faults.md lists what each component does while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

import asyncpg
from redis.exceptions import RedisError

from molam_workloads.core import metrics
from molam_workloads.core.redact import redact_urls_in

# Errors that mean "the service is away", not "this request is wrong": what an Outage waits
# out. (asyncpg raises OSError and CannotConnectNowError while PostgreSQL is down or starting,
# InterfaceError on a connection it lost, TimeoutError when a pool cannot connect in time.)
POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # shutting down, starting up, cannot connect now
    asyncpg.PostgresConnectionError,
    asyncpg.ReadOnlySQLTransactionError,
)
# redis-py wraps socket errors and timeouts in its own ConnectionError and TimeoutError.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisError,)

# A wait is reported at most this often (seconds); the first failure and the recovery always.
LOG_EVERY_SECONDS = 30.0
# Retries start at BACKOFF_FIRST seconds and double up to BACKOFF_CAP: a service back after a
# restart is found within a few seconds, and a long outage costs one attempt per cap.
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 10.0


def backoff(attempt: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> float:
    """The delay before retry number ``attempt`` (1-based): doubling from ``first``, capped."""
    return float(min(first * 2 ** min(max(attempt - 1, 0), 20), cap))


class Outage:
    """The state of one service as one component sees it: up, or waited for since when."""

    def __init__(
        self,
        component: str,
        service: str,
        log: logging.Logger,
        *,
        every: float = LOG_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.component = component
        self.service = service
        self._log = log
        self._every = every
        self._clock = clock
        self.since: float | None = None  # clock() of the first failure of this wait
        self.errors = 0  # failures in this wait
        self._reported_at = 0.0
        self._unreported = 0
        self._gauge = metrics.WAITING_FOR.labels(component, service)
        self._counter = metrics.DEPENDENCY_ERRORS.labels(component, service)
        self._gauge.set(0)
        self._prober: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> bool:
        return self.since is not None

    @property
    def attempts(self) -> int:
        """Failures in a row: what ``backoff`` takes."""
        return self.errors

    def failed(self, exc: BaseException, doing: str = "") -> None:
        """One more failure: the first one and one per interval are logged, with the count."""
        now = self._clock()
        self.errors += 1
        self._unreported += 1
        self._counter.inc()
        what = redact_urls_in(f"{type(exc).__name__}: {exc}")[:300]
        where = f" ({doing})" if doing else ""
        if self.since is None:
            self.since = self._reported_at = now
            self._unreported = 0
            self._gauge.set(1)
            self._log.warning("%s: waiting for %s%s: %s", self.component, self.service, where, what)
        elif now - self._reported_at >= self._every:
            self._log.warning(
                "%s: still waiting for %s%s: %d error(s) in the last %.0f s, down for %.0f s;"
                " the last: %s",
                self.component,
                self.service,
                where,
                self._unreported,
                now - self._reported_at,
                now - self.since,
                what,
            )
            self._reported_at = now
            self._unreported = 0

    def recovered(self) -> bool:
        """The service answered: ends a wait (logged once); True if one was under way."""
        if self.since is None:
            return False
        self._log.warning(
            "%s: %s is back after %.1f s (%d error(s) meanwhile)",
            self.component,
            self.service,
            self._clock() - self.since,
            self.errors,
        )
        self.since = None
        self.errors = self._unreported = 0
        self._gauge.set(0)
        return True

    def probe_until_back(
        self, probe: Callable[[], Awaitable[object]], *, gone: Callable[[], bool]
    ) -> None:
        """Where no call of the component's own would notice the service's return (an API
        that gets no request): call ``probe`` with the capped backoff until it succeeds, which
        ends the wait, or until ``gone()`` (the client was closed). One prober at a time."""
        if not self.waiting or (self._prober is not None and not self._prober.done()):
            return

        async def run() -> None:
            attempt = 0
            while self.waiting and not gone():
                attempt += 1
                await asyncio.sleep(backoff(attempt))
                try:
                    await probe()
                except Exception as exc:  # still away (or worse): the wait goes on
                    self.failed(exc, "probe")
                else:
                    self.recovered()

        self._prober = asyncio.get_running_loop().create_task(run())

    def waited(self) -> float:
        """Seconds since this wait began (0 when up)."""
        return 0.0 if self.since is None else self._clock() - self.since

    def delay(self) -> float:
        """How long to wait before the next attempt (0 when up)."""
        return backoff(self.errors) if self.errors else 0.0


class QuietReconnects(logging.Filter):
    """aiokafka logs an ERROR for every failed connection attempt (each poll of each client,
    so one to two a second while a broker is away; measured: 56 in 30 s of the operator's lag
    probe): the first for an address is kept, then at most one per ``every`` seconds with the
    count of those left out. The components' own ``Outage`` says what they wait for."""

    # aiokafka.client's messages (format strings), and how many leading args name the target.
    MESSAGES: ClassVar[dict[str, int]] = {
        'Unable connect to "%s:%s": %s': 2,
        "Unable connect to node with id %s: %s": 1,
        "Unable to update metadata from %s": 0,
    }

    def __init__(
        self, every: float = LOG_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._every = every
        self._clock = clock
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}  # key -> (reported, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        names = self.MESSAGES.get(str(record.msg))
        if names is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        key = (record.msg, *args[:names])
        now = self._clock()
        reported, left_out = self._seen.get(key, (-self._every, 0))
        if now - reported < self._every:
            self._seen[key] = (reported, left_out + 1)
            return False
        self._seen[key] = (now, 0)
        if left_out:
            since = now - reported
            record.msg = f"{record.getMessage()} ({left_out} more like it in {since:.0f} s)"
            record.args = None
        return True


def quiet_kafka_reconnects() -> None:
    """Install :class:`QuietReconnects` on aiokafka's logger, once per process."""
    logger = logging.getLogger("aiokafka")
    if not any(isinstance(f, QuietReconnects) for f in logger.filters):
        logger.addFilter(QuietReconnects())


_OUTAGES: dict[tuple[str, str], Outage] = {}
_log = logging.getLogger(__name__)


def outage(component: str, service: str) -> Outage:
    """The process's one ``Outage`` of ``service`` as ``component`` sees it, shared by every
    task of that component (the evaluator's cycles, its notifier, its pusher: one wait, one
    report)."""
    found = _OUTAGES.get((component, service))
    if found is None:
        found = _OUTAGES[component, service] = Outage(component, service, _log)
    return found


def forget(component: str, service: str) -> None:
    """Drop a wait whose subject is gone (the operator's, for a deleted pipeline): it is no
    longer reported, and its gauge goes with it."""
    if _OUTAGES.pop((component, service), None) is not None:
        metrics.WAITING_FOR.remove(component, service)


def waiting(component: str) -> list[str]:
    """The services ``component`` is waiting for now (its shared outages)."""
    return sorted(s for (c, s), o in _OUTAGES.items() if c == component and o.waiting)


def health(component: str) -> dict[str, object]:
    """A ``/health`` document of ``component``'s shared outages (``metrics.serve_metrics``'s
    ``health``): ``status`` ok or waiting, and for each service waited for, how long and how
    many errors (names and counts only: the errors' text, which names hosts, is in the log)."""
    now = time.monotonic()
    waits = {
        s: {"seconds": round(now - o.since, 1), "errors": o.errors}
        for (c, s), o in list(_OUTAGES.items())
        if c == component and o.since is not None
    }
    return {"status": "waiting" if waits else "ok", "waiting_for": waits}
