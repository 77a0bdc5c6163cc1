"""``core.faults``: a wait is logged once as it begins, then once per interval with the count of
errors since, and once as it ends; the gauge follows it; the backoff doubles up to its cap; the
probe ends a wait that no other call would notice."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from molam_workloads.core.faults import (
    BACKOFF_CAP,
    Outage,
    QuietReconnects,
    backoff,
    forget,
    outage,
    waiting,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gauge(component: str, service: str) -> float | None:
    return REGISTRY.get_sample_value(
        "analytics_waiting_for", {"component": component, "service": service}
    )


def test_one_line_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = logging.getLogger("test.faults")
    wait = Outage("test", "postgresql", log, every=30, clock=clock)
    errors = REGISTRY.get_sample_value(
        "analytics_dependency_errors_total", {"component": "test", "service": "postgresql"}
    )
    with caplog.at_level(logging.INFO, logger="test.faults"):
        for _ in range(100):  # 100 failures within 29 s: one line
            wait.failed(ConnectionRefusedError(111, "refused"), "a cycle")
            clock.now += 0.29
        assert [r.getMessage() for r in caplog.records] == [
            "test: waiting for postgresql (a cycle): ConnectionRefusedError: [Errno 111] refused"
        ]
        assert _gauge("test", "postgresql") == 1 and wait.waiting
        clock.now += 1.1  # 30 s after the first line
        wait.failed(TimeoutError("no answer"), "a cycle")
        assert (
            caplog.records[-1]
            .getMessage()
            .startswith(
                "test: still waiting for postgresql (a cycle): 100 error(s) in the last 30 s, "
                "down for 30 s; the last: TimeoutError: no answer"
            )
        )
        clock.now += 5
        assert wait.recovered() is True
        assert wait.recovered() is False  # once
    assert caplog.records[-1].getMessage() == (
        "test: postgresql is back after 35.1 s (101 error(s) meanwhile)"
    )
    assert len(caplog.records) == 3
    assert _gauge("test", "postgresql") == 0 and not wait.waiting and wait.delay() == 0
    after = REGISTRY.get_sample_value(
        "analytics_dependency_errors_total", {"component": "test", "service": "postgresql"}
    )
    assert after is not None and after - (errors or 0.0) == 101


def test_urls_in_errors_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    wait = Outage("test", "redis", logging.getLogger("test.faults"))
    with caplog.at_level(logging.INFO, logger="test.faults"):
        wait.failed(OSError("cannot reach redis://:hunter2@192.0.2.5:6379/0"))
    assert "hunter2" not in caplog.text and "192.0.2.5" in caplog.text


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff(10_000) == BACKOFF_CAP


def test_shared_outages_and_what_a_component_waits_for() -> None:
    first = outage("test-shared", "kafka")
    assert outage("test-shared", "kafka") is first
    assert waiting("test-shared") == []
    first.failed(ConnectionError("down"))
    assert waiting("test-shared") == ["kafka"]
    first.recovered()
    assert waiting("test-shared") == []


async def test_the_probe_ends_a_wait_nobody_else_would_notice() -> None:
    wait = Outage("test", "probe", logging.getLogger("test.faults"))
    answers = iter([OSError("still down"), None])

    async def probe() -> None:
        answer = next(answers)
        if answer is not None:
            raise answer

    wait.failed(OSError("down"))
    wait.probe_until_back(probe, gone=lambda: False)
    wait.probe_until_back(probe, gone=lambda: False)  # one prober at a time
    deadline = asyncio.get_running_loop().time() + 5
    while wait.waiting:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert wait.errors == 0 and _gauge("test", "probe") == 0


def test_aiokafka_reconnect_errors_once_per_interval_and_address() -> None:
    """aiokafka's own ERROR per failed connection (its format strings): the first for an
    address, then one per interval with the count left out; other messages untouched."""
    clock = Clock()
    quiet = QuietReconnects(every=30, clock=clock)

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, "client.py", 1, msg, args, None)

    refused = ConnectionRefusedError(111, "refused")
    kept = []
    for _ in range(60):  # one attempt a second for 60 s, to two brokers
        for port in (9092, 9093):
            r = record('Unable connect to "%s:%s": %s', "192.0.2.1", port, refused)
            if quiet.filter(r):
                kept.append(r.getMessage())
        clock.now += 1
    assert len(kept) == 4, kept  # at 0 s and 30 s, for each address
    assert kept[0].startswith('Unable connect to "192.0.2.1:9092"')
    assert "29 more like it in 30 s" in kept[2]
    assert quiet.filter(record("Unable connect to node with id %s: %s", 1, refused))
    assert quiet.filter(record("Heartbeat failed for group %s", "g"))
    assert quiet.filter(record("Heartbeat failed for group %s", "g"))


def test_a_forgotten_wait_is_no_longer_reported() -> None:
    """The subject of a wait is gone (a deleted pipeline): not listed, and its gauge removed."""
    wait = outage("test-forget", "kafka ns/pipeline/p")
    wait.failed(ConnectionRefusedError(111, "refused"))
    assert waiting("test-forget") == ["kafka ns/pipeline/p"]
    assert _gauge("test-forget", "kafka ns/pipeline/p") == 1
    forget("test-forget", "kafka ns/pipeline/p")
    assert waiting("test-forget") == []
    assert _gauge("test-forget", "kafka ns/pipeline/p") is None
    forget("test-forget", "kafka ns/pipeline/p")  # twice: nothing to do
