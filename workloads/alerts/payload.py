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

Signature: when ``ALERT_WEBHOOK_SECRET`` is set, every POST carries
``X-Molam-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes with that key>``; a
receiver recomputes it over the raw body and compares in constant time
(``hmac.compare_digest``). ``X-Molam-Delivery`` (the outbox id) is the same on every retry
of one delivery, so a receiver can drop the rare duplicate left by a crash mid-send.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

SIGNATURE_HEADER = "X-Molam-Signature"
DELIVERY_HEADER = "X-Molam-Delivery"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing
_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_SCOPE_LABELS = ("merchant_id", "country", "currency", "channel")


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fmt_number(v: Decimal | None) -> str:
    """Human-readable number for annotations: 2 decimals above 1, 4 significant digits below."""
    if v is None:
        return "no data"
    if abs(v) >= 1:
        return format(v.quantize(Decimal("0.01")).normalize(), "f")
    return format(v.normalize(), ".4g")


def alert_labels(
    *, rule_name: str, rule_id: str, metric: str, severity: str, scope: Mapping[str, str | None]
) -> dict[str, str]:
    """The alert's identity: rule, metric, severity and the scope it is restricted to."""
    labels = {"alertname": rule_name, "severity": severity, "metric": metric, "rule_id": rule_id}
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
) -> dict[str, str]:
    where = ", ".join(f"{k}={v}" for k, v in scope.items() if v) or "all traffic"
    op = _OPS.get(comparison, comparison)
    return {
        "summary": f"{metric} {fmt_number(value)} {op} {fmt_number(threshold)}",
        "description": (
            f"{metric} over the last {window_minutes} min ({where}) was {fmt_number(value)}, "
            f"threshold {op} {fmt_number(threshold)}."
        ),
    }


def fingerprint(labels: Mapping[str, str]) -> str:
    """16 hex digits identifying the label set (stable across firings of one rule and scope)."""
    text = "\xff".join(f"{k}\xfe{labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def sign(secret: bytes, body: bytes) -> str:
    """Value of the ``X-Molam-Signature`` header for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute the signature over the raw body, compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)
