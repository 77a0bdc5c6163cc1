"""The pure parts: the state machine, comparisons, payloads, signatures and backoff."""

from __future__ import annotations

import hashlib
import hmac
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


@pytest.mark.parametrize(("cond", "no_data_state"), [(False, "nodata"), (None, "ok")])
def test_false_or_no_data_read_as_ok_resets_pending_and_resolves_firing(
    cond: bool | None, no_data_state: str
) -> None:
    s = step(State.pending, NOW, cond, NOW + timedelta(seconds=10), 300, no_data_state)
    assert (s.state, s.pending_since, s.action) == (State.inactive, None, Action.none)
    s = step(State.firing, None, cond, NOW, 300, no_data_state)
    assert (s.state, s.action) == (State.inactive, Action.resolve)
    s = step(State.inactive, None, cond, NOW, 0, no_data_state)
    assert (s.state, s.action) == (State.inactive, Action.none)


def test_no_data_is_its_own_state_by_default() -> None:
    """noDataState nodata (the default): the state NoData; it resets a pending rule, resolves a
    firing alert, and data coming back starts from scratch."""
    s = step(State.pending, NOW, None, NOW + timedelta(seconds=10), 300)
    assert (s.state, s.pending_since, s.action) == (State.nodata, None, Action.none)
    s = step(State.firing, None, None, NOW, 300)
    assert (s.state, s.action) == (State.nodata, Action.resolve)
    s = step(State.nodata, None, None, NOW, 0)
    assert (s.state, s.action) == (State.nodata, Action.none)
    s = step(State.nodata, None, True, NOW, 300)
    assert (s.state, s.pending_since, s.action) == (State.pending, NOW, Action.none)
    s = step(State.nodata, None, False, NOW, 0)
    assert (s.state, s.action) == (State.inactive, Action.none)


def test_no_data_read_as_alerting_fires_after_for_only() -> None:
    s = step(State.nodata, None, None, NOW, 300, "alerting")
    assert (s.state, s.pending_since, s.action) == (State.pending, NOW, Action.none)
    s = step(s.state, s.pending_since, None, NOW + timedelta(seconds=299), 300, "alerting")
    assert (s.state, s.action) == (State.pending, Action.none)
    s = step(s.state, s.pending_since, None, NOW + timedelta(seconds=300), 300, "alerting")
    assert (s.state, s.action) == (State.firing, Action.fire)


@pytest.mark.parametrize("no_data_state", ["nodata", "ok"])
@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("for_seconds", [0, 60])
def test_no_data_never_fires_unless_asked(
    no_data_state: str, state: State, for_seconds: int
) -> None:
    """Only noDataState alerting turns no data into a firing: from any state, any ``for``."""
    since = NOW - timedelta(hours=1) if state is State.pending else None
    s = step(state, since, None, NOW, for_seconds, no_data_state)
    assert s.action is not Action.fire and s.state is not State.firing
    assert s.state is not State.pending


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
        rule_name="high-fail", source="api", metric="failure_rate", severity="critical", scope=scope
    )
    assert labels == {
        "alertname": "high-fail",
        "severity": "critical",
        "metric": "failure_rate",
        "rule": "high-fail",
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


def test_labels_of_a_custom_resource_rule_name_its_namespace() -> None:
    labels = alert_labels(
        rule_name="payments/high-fail",
        source="crd",
        metric="failure_rate",
        severity="warning",
        scope={},
    )
    assert labels == {
        "alertname": "high-fail",
        "severity": "warning",
        "metric": "failure_rate",
        "rule": "payments/high-fail",
        "namespace": "payments",
    }


def test_signature_binds_the_timestamp_and_refuses_replays() -> None:
    raw = b'{"a":1}'
    header = sign(b"k", raw, at=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and len(v1) == 3 + 64
    expected = hmac.new(b"k", b"1700000000." + raw, hashlib.sha256).hexdigest()
    assert v1 == f"v1={expected}"
    assert verify(b"k", raw, header, now=1_700_000_000 + 299)
    assert not verify(b"k", raw, header, now=1_700_000_000 + 301)  # a replay
    assert not verify(b"other", raw, header, now=1_700_000_000)
    assert not verify(b"k", raw + b" ", header, now=1_700_000_000)
    # The timestamp cannot be moved forward without the key.
    assert not verify(b"k", raw, f"t=1700000100,{v1}", now=1_700_000_100)
    assert not verify(b"k", raw, None) and not verify(b"k", raw, "v1=abc")


def test_backoff_doubles_with_jitter_and_cap() -> None:
    assert [backoff_seconds(n, 2, 300) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert backoff_seconds(20, 2, 300) == 300
    assert backoff_seconds(3, 2, 300, rnd=0.0) == 4  # jitter: half to full delay
