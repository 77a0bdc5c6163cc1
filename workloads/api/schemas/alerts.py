from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from molam_workloads.core.rules import AlertRuleSpec

RuleName = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", max_length=253)
]


class AlertRuleCreate(BaseModel):
    name: RuleName = Field(description="Unique name (a Kubernetes object name).")
    spec: AlertRuleSpec = Field(description="The AlertRule custom resource's spec, camelCase.")


class RuleStatusOut(BaseModel):
    state: str
    last_value: Decimal | None
    last_evaluated_at: datetime | None
    last_fired_at: datetime | None
    current_alert_id: int | None


class AlertRuleOut(BaseModel):
    id: uuid.UUID
    name: str
    source: str = Field(description="api, or crd: managed by an AlertRule (read-only here).")
    spec: dict[str, Any]
    status: RuleStatusOut
    created_at: datetime
    updated_at: datetime


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
