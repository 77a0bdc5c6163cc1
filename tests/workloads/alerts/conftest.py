"""Fixtures of the alerts tests: a pool on the test's own database, settings with fast retries,
minute-data helpers and real local webhook receivers (HTTP servers on 127.0.0.1 free ports)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from molam_workloads.alerts.settings import AlertsSettings
from molam_workloads.core.rules import AlertRuleSpec, save_rule

SECRET = "test-webhook-secret"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday noon; tests pass `now` explicitly


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def settings(database_url: str) -> AlertsSettings:
    return AlertsSettings(
        database_url=database_url,
        alert_webhook_secret=SECRET,
        alerts_webhook_timeout_seconds=1.0,
        alerts_webhook_backoff_base_seconds=0.1,
        alerts_webhook_backoff_cap_seconds=0.4,
        alerts_webhook_max_attempts=4,
        alerts_notify_poll_seconds=0.05,
        alerts_external_url="http://analytics.test:8082",
        # The receivers below listen on loopback, which the egress policy refuses by default.
        alert_webhook_allow="127.0.0.1",
    )


async def add_minutes(
    conn: asyncpg.Connection,
    start: datetime,
    minutes: int,
    *,
    merchant: str | None = "M-1",
    country: str = "SN",
    currency: str = "XOF",
    channel: str = "mobile_money",
    succeeded: int = 10,
    failed: int = 0,
    payment_count: int | None = None,
    payment_volume: Decimal | str = "0",
    refund_count: int = 0,
    table: str = "txn_minute_agg",
    step: timedelta = timedelta(minutes=1),
) -> None:
    """One aggregate row per bucket from ``start`` (minute or hour buckets)."""
    col = "minute" if table == "txn_minute_agg" else "hour"
    pay = succeeded if payment_count is None else payment_count
    await conn.execute(
        f"""
        INSERT INTO {table} ({col}, merchant_id, country, currency, channel, tx_count,
            succeeded_count, failed_count, payment_count, payment_volume_local,
            gross_volume_local, refund_count)
        SELECT $1::timestamptz + g * $2::interval, $3::text, $4::text, $5::text, $6::text,
               $7::bigint + $8::bigint, $7, $8, $9::bigint, $10::numeric, $10::numeric,
               $11::bigint
        FROM generate_series(0, $12::int - 1) g
        """,
        start,
        step,
        merchant,
        country,
        currency,
        channel,
        succeeded,
        failed,
        pay,
        Decimal(payment_volume),
        refund_count,
        minutes,
    )


async def add_rule(conn: asyncpg.Connection, name: str, **doc: Any) -> str:
    spec = AlertRuleSpec.model_validate(doc)
    return str(await save_rule(conn, name=name, source="api", spec=spec))


# --- webhook receivers ------------------------------------------------------------------------


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server; answers ``statuses`` in turn (then 200), after ``delay`` seconds."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(time.monotonic(), headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


MakeReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[MakeReceiver]:
    made: list[Receiver] = []

    async def make(**kwargs: Any) -> Receiver:
        r = await Receiver(**kwargs).start()
        made.append(r)
        return r

    yield make
    for r in made:
        await r.stop()


def closed_port_url() -> str:
    """A URL nobody listens on (a port just freed)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/hook"


async def wait_for(pred: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
