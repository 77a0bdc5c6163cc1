"""The pure parts: the state machine, comparisons, payloads, signatures and backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from molam_workloads.alerts.notifier import backoff_seconds
from molam_workloads.alerts.payload import (
    ZERO_TIME,
    alert_annotations,
    alert_labels,
    fingerprint,
    sign,
    verify,
    webhook_payload,
)
from molam_workloads.alerts.state import Action, State, compare, step

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_fires_at_once_without_for() -> None:
    s = step(State.inactive, None, True, NOW, 0)
    assert (s.state, s.action) == (State.firing, Action.fire)


def test_pending_until_for_elapsed_then_fires_once() -> None:
    s = step(State.inactive, None, True, NOW, 300)
    assert (s.state, s.pending_since, s.action) == (State.pending, NOW, Action.none)
    s = step(s.state, s.pending_since, True, NOW + timedelta(seconds=299), 300)
    assert (s.state, s.pending_since, s.action) == (State.pending, NOW, Action.none)
    s = step(s.state, s.pending_since, True, NOW + timedelta(seconds=300), 300)
    assert (s.state, s.action) == (State.firing, Action.fire)
    s = step(s.state, s.pending_since, True, NOW + timedelta(seconds=360), 300)
    assert (s.state, s.action) == (State.firing, Action.none)


@pytest.mark.parametrize("cond", [False, None])
def test_false_or_no_data_resets_pending_and_resolves_firing(cond: bool | None) -> None:
    s = step(State.pending, NOW, cond, NOW + timedelta(seconds=10), 300)
    assert (s.state, s.pending_since, s.action) == (State.inactive, None, Action.none)
    s = step(State.firing, None, cond, NOW, 300)
    assert (s.state, s.action) == (State.inactive, Action.resolve)
    s = step(State.inactive, None, cond, NOW, 0)
    assert (s.state, s.action) == (State.inactive, Action.none)


def test_pending_interrupted_starts_over() -> None:
    s = step(State.inactive, None, True, NOW, 300)
    s = step(s.state, s.pending_since, False, NOW + timedelta(seconds=200), 300)
    s = step(s.state, s.pending_since, True, NOW + timedelta(seconds=310), 300)
    assert (s.state, s.pending_since) == (State.pending, NOW + timedelta(seconds=310))


@pytest.mark.parametrize(
    ("value", "comparison", "expected"),
    [
        ("0.3", "gt", True),
        ("0.2", "gt", False),
        ("0.2", "gte", True),
        ("0.1", "lt", True),
        ("0.2", "lte", True),
        ("0.3", "lte", False),
    ],
)
def test_compare(value: str, comparison: str, expected: bool) -> None:
    assert compare(Decimal(value), comparison, Decimal("0.2")) is expected


def test_compare_no_data() -> None:
    assert compare(None, "gt", Decimal(0)) is None


def test_payload_is_alertmanager_v4_and_signed() -> None:
    scope = {"merchant_id": "M-1", "country": "SN", "currency": None, "channel": None}
    labels = alert_labels(
        rule_name="high-fail", rule_id="r1", metric="failure_rate", severity="critical", scope=scope
    )
    assert labels == {
        "alertname": "high-fail",
        "severity": "critical",
        "metric": "failure_rate",
        "rule_id": "r1",
        "merchant_id": "M-1",
        "country": "SN",
    }
    ann = alert_annotations(
        metric="failure_rate",
        comparison="gt",
        threshold=Decimal("0.2"),
        value=Decimal("0.35"),
        window_minutes=15,
        scope=scope,
    )
    assert ann["summary"] == "failure_rate 0.35 > 0.2"
    body = webhook_payload(
        status="firing",
        alert_id=7,
        labels=labels,
        annotations=ann,
        starts_at=NOW,
        ends_at=None,
        external_url="http://x:8082/",
        receiver="molam-analytics",
    )
    assert body["version"] == "4"
    assert body["groupKey"] == '{}:{alertname="high-fail"}'
    assert body["groupLabels"] == {"alertname": "high-fail"}
    assert body["commonLabels"] == labels
    a = body["alerts"][0]
    assert a["startsAt"] == "2026-03-02T12:00:00Z"
    assert a["endsAt"] == ZERO_TIME
    assert a["generatorURL"] == "http://x:8082/v1/alerts/7"
    assert a["fingerprint"] == fingerprint(labels) and len(a["fingerprint"]) == 16
    raw = b'{"a":1}'
    header = sign(b"k", raw)
    assert header.startswith("sha256=") and verify(b"k", raw, header)
    assert not verify(b"other", raw, header) and not verify(b"k", raw + b" ", header)


def test_backoff_doubles_with_jitter_and_cap() -> None:
    assert [backoff_seconds(n, 2, 300) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff_seconds(20, 2, 300) == 300
    assert backoff_seconds(3, 2, 300, rnd=0.0) == 4  # jitter: half to full delay
