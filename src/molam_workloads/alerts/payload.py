"""What receivers get: Alertmanager-compatible webhook bodies and their signature (pure).

The body follows Alertmanager's webhook format (version 4), one alert per message, so an
existing Alertmanager receiver (PagerDuty/Slack bridges, ``alertmanager-webhook-logger``...)
works unchanged::

    {"version": "4", "groupKey": "{}:{alertname=\\"<rule>\\"}", "truncatedAlerts": 0,
     "status": "firing|resolved", "receiver": "molam-analytics",
     "groupLabels": {"alertname": "<rule>"}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": "<ALERTS_EXTERNAL_URL>",
     "alerts": [{"status": ..., "labels": {...}, "annotations": {"summary", "description"},
                 "startsAt": RFC 3339, "endsAt": RFC 3339 (0001-01-01T00:00:00Z while firing),
                 "generatorURL": "<externalURL>/v1/alerts/<id>", "fingerprint": 16 hex}]}

Signature (Stripe's scheme): each POST carries
``X-Molam-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + the exact body bytes>``,
keyed with the webhook's own secret, else ``ALERT_WEBHOOK_SECRET``. The timestamp is inside
what is signed, so a captured request cannot be replayed later: a receiver recomputes the HMAC
over the raw body, compares in constant time and refuses a ``t`` more than 5 minutes from its
clock (``verify``; docs/alerting.md shows it). ``X-Molam-Delivery`` (the outbox id) is the
same on every retry of one delivery, so a receiver can drop the rare duplicate left by a crash
mid-send.

``fingerprint`` is Alertmanager's own (prometheus/common ``model.LabelsToSignature``), so a
webhook receiver and an Alertmanager name one alert with one id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

SIGNATURE_HEADER = "X-Molam-Signature"
DELIVERY_HEADER = "X-Molam-Delivery"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing
_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_SCOPE_LABELS = ("merchant_id", "country", "currency", "channel")
REPLAY_TOLERANCE_SECONDS = 300  # receivers refuse a signature older (or newer) than this
# FNV-1a 64 (prometheus/common model/fnv.go) and the byte between names and values that cannot
# occur in UTF-8.
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEP = 0xFF
_MASK = (1 << 64) - 1


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fmt_number(v: Decimal | None) -> str:
    """Human-readable number for annotations: 2 decimals above 1, 4 significant digits below."""
    if v is None:
        return "no data"
    if abs(v) >= 1:
        return format(v.quantize(Decimal("0.01")).normalize(), "f")
    return format(v.normalize(), ".4g")


def rule_scope(rule: asyncpg.Record | Mapping[str, Any]) -> dict[str, str | None]:
    """The scope of an ``analytics_alert_rules`` row, keyed as its labels name it."""
    return {key: rule[f"scope_{key}"] for key in _SCOPE_LABELS}


def alert_labels(
    *, rule_name: str, source: str, metric: str, severity: str, scope: Mapping[str, str | None]
) -> dict[str, str]:
    """The alert's identity, as Prometheus would label it: ``alertname`` (the rule's own name),
    ``severity``, ``metric``, ``rule`` (its name in the database), ``namespace`` for a rule
    from a custom resource (stored as "<namespace>/<name>"), and the scope it is restricted to.
    """
    namespace, short = "", rule_name
    if source == "crd" and "/" in rule_name:
        namespace, short = rule_name.split("/", 1)
    labels = {"alertname": short, "severity": severity, "metric": metric, "rule": rule_name}
    if namespace:
        labels["namespace"] = namespace
    for key in _SCOPE_LABELS:
        value = scope.get(key)
        if value:
            labels[key] = value
    return labels


def alert_annotations(
    *,
    metric: str,
    comparison: str,
    threshold: Decimal,
    value: Decimal | None,
    window_minutes: int,
    scope: Mapping[str, str | None],
    runbook_url: str | None = None,
) -> dict[str, str]:
    where = ", ".join(f"{k}={v}" for k, v in scope.items() if v) or "all traffic"
    op = _OPS.get(comparison, comparison)
    annotations = {
        "summary": f"{metric} {fmt_number(value)} {op} {fmt_number(threshold)}",
        "description": (
            f"{metric} over the last {window_minutes} min ({where}) was {fmt_number(value)}, "
            f"threshold {op} {fmt_number(threshold)}."
        ),
    }
    if runbook_url:
        annotations["runbook_url"] = runbook_url
    return annotations


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over the names sorted byte-wise,
    each name and value followed by 0xff, as 16 lower-case hex digits."""
    h = _FNV_OFFSET
    for name in sorted(labels, key=lambda n: n.encode()):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
            h = ((h ^ _SEP) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


def webhook_payload(
    *,
    status: str,
    alert_id: int,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    starts_at: datetime,
    ends_at: datetime | None,
    external_url: str,
    receiver: str,
) -> dict[str, Any]:
    base = external_url.rstrip("/")
    name = labels.get("alertname", "")
    return {
        "version": "4",
        "groupKey": "{}:{alertname=" + json.dumps(name) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": name},
        "commonLabels": dict(labels),
        "commonAnnotations": dict(annotations),
        "externalURL": base,
        "alerts": [
            {
                "status": status,
                "labels": dict(labels),
                "annotations": dict(annotations),
                "startsAt": rfc3339(starts_at),
                "endsAt": rfc3339(ends_at) if ends_at else ZERO_TIME,
                "generatorURL": f"{base}/v1/alerts/{alert_id}",
                "fingerprint": fingerprint(labels),
            }
        ],
    }


def sign(secret: bytes, body: bytes, at: int | None = None) -> str:
    """Value of the ``X-Molam-Signature`` header for ``body`` sent at unix time ``at``."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance: float = REPLAY_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: parse ``t`` and every ``v1``, refuse a ``t`` outside the
    tolerance (a replay), recompute the HMAC of "<t>.<body>" and compare in constant time."""
    if not header:
        return False
    t: int | None = None
    macs: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            macs.append(value)
    if t is None or not macs:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, m) for m in macs)


def alertmanager_alert(
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    starts_at: datetime,
    ends_at: datetime,
    generator_url: str,
) -> dict[str, Any]:
    """One element of the list ``POST /api/v2/alerts`` takes, as Prometheus sends it."""
    return {
        "labels": dict(labels),
        "annotations": dict(annotations),
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": generator_url,
    }


def firing_ends_at(now: datetime, interval_seconds: float, resend_seconds: float) -> datetime:
    """``endsAt`` of a firing alert: four times the longer of the evaluation interval and the
    resend delay ahead (Prometheus's rule), so a missed post or two never resolves it."""
    return now + timedelta(seconds=4 * max(interval_seconds, resend_seconds))
