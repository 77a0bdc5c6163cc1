"""Alert rules: the one document shared by the ``AlertRule`` custom resource's ``spec``, the
API's alert-rule endpoints and the ``analytics_alert_rules`` table (docs/custom-resources.md).

``AlertRuleSpec`` validates the document (camelCase, as in the CR); ``save_rule`` /
``delete_rule`` write its typed projection that the evaluator queries set-wise, and
``rule_status`` reads back what the evaluator decided, for the CR status and the API.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from molam_workloads.core import catalogue
from molam_workloads.core.decimals import ExactDecimal

MAX_WINDOW_MINUTES = 44640  # 31 days: the longest window the minute/hour tables can answer
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# A rule's ``for`` as its schema states it: seconds, or hours/minutes/seconds (90s, 5m, 1h30m),
# with few enough digits that it always fits the integer seconds column.
DURATION_TEXT = r"^(?:[0-9]{1,9}|(?:[0-9]{1,5}h)?(?:[0-9]{1,7}m)?(?:[0-9]{1,9}s)?)$"


# The metrics alert rules may watch: the names of ``core.catalogue.alert_metrics()``.
Metric = StrEnum("Metric", [(m.name, m.name) for m in catalogue.alert_metrics()])  # type: ignore[misc]


class Comparison(StrEnum):
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"


class NoDataState(StrEnum):
    """What an evaluation without data means for a rule (Grafana's ``noDataState``): a rate
    without denominator, a volume without FX rate, or a stale ingestion."""

    ok = "ok"  # the condition is clear: inactive, resets pending, resolves
    nodata = "nodata"  # the state NoData: never fires, resets pending, resolves
    alerting = "alerting"  # the condition holds: pending, then firing after `for`


# The evaluator's states (analytics_alert_rule_state.state) as the CR status and the API say them.
STATE_LABELS = {
    "inactive": "Inactive",
    "pending": "Pending",
    "firing": "Firing",
    "nodata": "NoData",
}


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


# The sums a rule's value is computed from (the anomaly count aside): those of the catalogue's
# alert metrics. A money sum is in the reporting currency once converted.
RULE_SUMS: tuple[str, ...] = tuple(
    s.name
    for s in catalogue.SUMS
    if s.measure is not None and any(s in m.sums for m in catalogue.alert_metrics())
)
RULE_MONEY_SUMS: tuple[str, ...] = tuple(
    s for s in RULE_SUMS if catalogue.SUM_BY_NAME[s].unit is catalogue.Unit.MONEY
)
# ``RULE_SUMS`` over aggregate rows ``a``, in the local currency of each row.
RULE_SUMS_SQL = ", ".join(f"sum(a.{catalogue.SUM_BY_NAME[s].measure}) AS {s}" for s in RULE_SUMS)


def metric_value_sql(metric: str, c: str, anomalies: str) -> str:
    """SQL value of the rule metric ``metric`` (an SQL expression) from the sums ``RULE_SUMS``
    of alias ``c`` (money in the reporting currency, and ``unconverted``, the groups whose
    volume has no FX rate) and the anomaly count ``anomalies``. NULL is no data: a rate without
    denominator, a volume without FX rate.

    Built from the catalogue's formulas (``MetricDef.rule_sql``): the evaluator and the backtest
    both build their SQL from it.
    """
    refs = {s: f"{c}.{s}" for s in RULE_SUMS} | {"anomaly_count": anomalies}
    whens = "\n".join(
        f"           WHEN '{m.name}' THEN {m.rule_sql(refs, f'{c}.unconverted')}"
        for m in catalogue.alert_metrics()
    )
    return f"""CASE {metric}
{whens}
       END"""


def comparison_sql(comparison: str, value: str, threshold: str) -> str:
    """SQL twin of ``alerts.state.compare``: NULL when ``value`` is NULL (no data)."""
    return f"""CASE {comparison} WHEN 'gt' THEN {value} > {threshold}
           WHEN 'gte' THEN {value} >= {threshold} WHEN 'lt' THEN {value} < {threshold}
           WHEN 'lte' THEN {value} <= {threshold} END"""


def parse_duration(text: str) -> int:
    """``"90s"``, ``"5m"``, ``"1h30m"`` (or a bare number of seconds) -> seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    m = _DURATION.match(text)
    if not text or not m:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def _matches(pattern: str, what: str) -> AfterValidator:
    """Checks a string against ``pattern`` with Python's ``re``, as the schema validators of
    clients read it (pydantic's own ``pattern`` is another engine: ``$`` differs)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(f"{value[:80]!r} is not {what}")
        return value

    return AfterValidator(check)


# An http(s) URL whose host every URL parser reads (a name or an IPv4 address, no brackets),
# printable ASCII (anything else percent-encoded): it is echoed in answers and used as a
# destination, so one that a client or the notifier's HTTP client cannot parse is refused.
HTTP_URL_TEXT = (
    r"^https?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?[A-Za-z0-9._~%!$&'()*+,;=-]+"
    r"(?::[0-9]{1,5})?(?:[/?#][!-~]*)?$"
)
HttpUrlText = Annotated[
    str,
    StringConstraints(max_length=2048),
    _matches(HTTP_URL_TEXT, "an http(s) URL with a host name or IPv4 address"),
    WithJsonSchema({"type": "string", "maxLength": 2048, "pattern": HTTP_URL_TEXT}),
]
DurationText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32),
    _matches(DURATION_TEXT, "a duration like 30s, 5m or 1h30m"),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 32, "pattern": DURATION_TEXT}),
]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Scope(_Doc):
    merchant_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, alias="merchantId"
    )
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    channel: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class SecretKeyRef(_Doc):
    """A key of a Secret in the custom resource's namespace (the operator reads it)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] = Field(
        max_length=253
    )
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]


class Webhook(_Doc):
    url: HttpUrlText
    send_resolved: StrictBool = Field(default=True, alias="sendResolved")
    # Write-only: stored for signing, never part of the document the API or the CR shows.
    secret: SecretStr | None = Field(
        default=None,
        exclude=True,
        min_length=16,
        max_length=512,
        description="HMAC key of this webhook's X-Molam-Signature (write-only).",
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        alias="secretRef",
        description="Secret key holding this webhook's HMAC key (custom resources).",
    )


AlertmanagerUrl = HttpUrlText


class Notify(_Doc):
    webhooks: list[Webhook] = Field(default_factory=list, max_length=20)
    alertmanagers: list[AlertmanagerUrl] = Field(
        default_factory=list,
        max_length=10,
        description="Alertmanager base URLs the rule's alerts are pushed to (/api/v2/alerts).",
    )


class AlertRuleSpec(_Doc):
    metric: Metric
    comparison: Comparison
    threshold: ExactDecimal  # a number, or a decimal string such as "0.8"
    window_minutes: int = Field(alias="windowMinutes", ge=1, le=MAX_WINDOW_MINUTES)
    for_: DurationText | None = Field(
        default=None,
        alias="for",
        description="How long the condition holds before the rule fires: 90s, 5m, 1h30m.",
    )
    severity: Severity = Severity.warning
    scope: Scope = Field(default_factory=Scope)
    notify: Notify = Field(default_factory=Notify)
    no_data_state: NoDataState = Field(
        default=NoDataState.nodata,
        alias="noDataState",
        description="An evaluation without data (a rate without denominator, a volume without "
        "FX rate, a stale ingestion): nodata shows the state NoData and never fires; ok counts "
        "it as a clear condition; alerting as a held one.",
    )
    enabled: StrictBool = True  # JSON true/false only, as the schema says (never 0 or "yes")
    runbook_url: HttpUrlText | None = Field(default=None, alias="runbookUrl")

    @field_validator("for_")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @property
    def for_seconds(self) -> int:
        return parse_duration(self.for_) if self.for_ else 0

    def document(self) -> dict[str, Any]:
        """The JSON document, camelCase, as the CR spec and the API show it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


async def save_rule(
    conn: asyncpg.Connection, *, name: str, source: str, spec: AlertRuleSpec
) -> uuid.UUID:
    """Create or replace the rule called ``name``; returns its id (stable across updates)."""
    row = await conn.fetchrow(
        """
        INSERT INTO analytics_alert_rules AS r (
            name, source, metric, comparison, threshold, window_minutes, for_seconds, severity,
            scope_merchant_id, scope_country, scope_currency, scope_channel, webhooks,
            is_active, spec, alertmanagers, runbook_url, no_data_state)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14, $15::jsonb,
                $16::jsonb, $17, $18)
        ON CONFLICT (name) DO UPDATE SET
            source = excluded.source, metric = excluded.metric,
            comparison = excluded.comparison, threshold = excluded.threshold,
            window_minutes = excluded.window_minutes, for_seconds = excluded.for_seconds,
            severity = excluded.severity, scope_merchant_id = excluded.scope_merchant_id,
            scope_country = excluded.scope_country, scope_currency = excluded.scope_currency,
            scope_channel = excluded.scope_channel, webhooks = excluded.webhooks,
            is_active = excluded.is_active, spec = excluded.spec,
            alertmanagers = excluded.alertmanagers, runbook_url = excluded.runbook_url,
            no_data_state = excluded.no_data_state,
            updated_at = now()
        RETURNING id
        """,
        name,
        source,
        spec.metric.value,
        spec.comparison.value,
        spec.threshold,
        spec.window_minutes,
        spec.for_seconds,
        spec.severity.value,
        spec.scope.merchant_id,
        spec.scope.country,
        spec.scope.currency,
        spec.scope.channel,
        json.dumps([_webhook_row(w) for w in spec.notify.webhooks]),
        spec.enabled,
        json.dumps(spec.document()),
        json.dumps([u.rstrip("/") for u in spec.notify.alertmanagers]),
        spec.runbook_url,
        spec.no_data_state.value,
    )
    assert row is not None
    rule_id: uuid.UUID = row["id"]
    return rule_id


def _webhook_row(w: Webhook) -> dict[str, Any]:
    """What the evaluator needs of a webhook: the document plus its secret, if any."""
    row = w.model_dump(mode="json", by_alias=True, exclude_none=True)
    if w.secret is not None:
        row["secret"] = w.secret.get_secret_value()
    return row


async def delete_rule(conn: asyncpg.Connection, name: str) -> bool:
    """Remove the rule; its past alerts stay (rule_id becomes NULL). False if it was absent."""
    result: str = await conn.execute("DELETE FROM analytics_alert_rules WHERE name = $1", name)
    return result != "DELETE 0"


@dataclass(frozen=True)
class RuleStatus:
    state: str  # Inactive | Pending | Firing | NoData (the CR's spelling)
    last_value: Decimal | None
    last_evaluated_at: datetime | None
    last_fired_at: datetime | None
    current_alert_id: int | None
    # The last notification attempt, as status.lastDelivery shows it (the operator fills it).
    last_delivery: dict[str, Any] | None = None
    # Why the last evaluation had no data (None: it had): no_denominator, no_fx_rate or
    # ingestion_stale; whatever the rule's noDataState made of it.
    no_data_reason: str | None = None

    def __post_init__(self) -> None:
        # The CR's spelling whatever the caller's ("nodata", "Nodata"): its enum has "NoData".
        object.__setattr__(self, "state", STATE_LABELS.get(self.state.lower(), self.state))


async def rule_status(conn: asyncpg.Connection, name: str) -> RuleStatus | None:
    row = await conn.fetchrow(
        """
        SELECT r.is_active, s.state, s.last_value, s.last_evaluated_at, s.last_fired_at,
               s.current_alert_id, s.no_data_reason
        FROM analytics_alert_rules r
        LEFT JOIN analytics_alert_rule_state s ON s.rule_id = r.id
        WHERE r.name = $1
        """,
        name,
    )
    if row is None:
        return None
    state = (row["state"] or "inactive") if row["is_active"] else "inactive"
    return RuleStatus(
        state=state,
        last_value=row["last_value"],
        last_evaluated_at=row["last_evaluated_at"],
        last_fired_at=row["last_fired_at"],
        current_alert_id=row["current_alert_id"],
        no_data_reason=row["no_data_reason"] if row["is_active"] else None,
    )
