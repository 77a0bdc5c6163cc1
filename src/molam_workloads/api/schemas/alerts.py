from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from molam_workloads.core.rules import AlertRuleSpec

RuleName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", max_length=253)
]


class AlertRuleCreate(BaseModel):
    name: RuleName = Field(description="Unique name (a Kubernetes object name).")
    spec: AlertRuleSpec = Field(description="The AlertRule custom resource's spec, camelCase.")


class RuleStatusOut(BaseModel):
    state: str = Field(description="Inactive, Pending, Firing or NoData.")
    last_value: Decimal | None = Field(description="null: the last evaluation had no data.")
    last_evaluated_at: datetime | None
    last_fired_at: datetime | None
    current_alert_id: int | None
    no_data_reason: str | None = Field(
        default=None,
        description="Why the last evaluation had no data, whatever the rule's noDataState made "
        "of it: no_denominator (a rate of nothing), no_fx_rate, ingestion_stale (no batch for "
        "ALERTS_STALE_INGESTION_MINUTES while the topic has lag); null: it had data.",
    )


class AlertRuleOut(BaseModel):
    id: uuid.UUID
    name: str
    source: str = Field(description="api, or crd: managed by an AlertRule (read-only here).")
    spec: dict[str, Any]
    status: RuleStatusOut
    created_at: datetime
    updated_at: datetime


class _CamelOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class BacktestFiring(_CamelOut):
    pending_since: datetime = Field(
        alias="pendingSince", description="First evaluation of the run that held."
    )
    fired_at: datetime = Field(
        alias="firedAt", description="When it would have fired (`for` after pendingSince)."
    )
    resolved_at: datetime | None = Field(
        alias="resolvedAt", description="When it would have resolved; null: still firing."
    )
    value: float | None = Field(description="The value that fired it (null: no data).")
    peak: float | None = Field(description="The value furthest past the threshold while firing.")
    evaluations: int = Field(description="Evaluations while firing.")
    resolution: str = Field(
        description="minute, or hour where the minute aggregates are no longer kept."
    )


class BacktestOut(_CamelOut):
    rule: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to", description="The end replayed: at most now.")
    minutes_from: datetime | None = Field(
        alias="minutesFrom",
        description="Evaluated every minute from here on, every hour before (null: hours only).",
    )
    evaluations: int
    no_data: int = Field(
        alias="noData", description="Evaluations without a value (e.g. a rate of nothing)."
    )
    firings_total: int = Field(alias="firingsTotal")
    firings: list[BacktestFiring]
    duration_ms: float = Field(alias="durationMs")


class AlertRulePage(BaseModel):
    items: list[AlertRuleOut]
    total: int
    limit: int
    offset: int


class AlertOut(BaseModel):
    id: int
    rule_id: uuid.UUID | None
    rule_name: str
    metric: str
    severity: str
    state: str
    value: Decimal | None
    threshold: Decimal
    comparison: str
    scope: dict[str, Any]
    started_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    limit: int
    offset: int


class AlertAction(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)


class AnomalyOut(BaseModel):
    id: int
    merchant_id: str | None
    metric: str
    bucket: datetime
    value: Decimal
    baseline: Decimal
    zscore: float
    direction: str
    detected_at: datetime
    details: dict[str, Any]


class AnomalyPage(BaseModel):
    items: list[AnomalyOut]
    total: int
    limit: int
    offset: int
