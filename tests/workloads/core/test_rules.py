"""The alert-rule document and its projection into analytics_alert_rules."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest
from helpers.samples import ALERT_RULE, sample_spec
from pydantic import ValidationError

from molam_workloads.core.rules import (
    AlertRuleSpec,
    delete_rule,
    parse_duration,
    rule_status,
    save_rule,
)

SAMPLE = sample_spec(ALERT_RULE)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("45", 45), ("2h", 7200)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "1d", "-5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_spec_round_trips_as_the_cr_document() -> None:
    spec = AlertRuleSpec.model_validate(SAMPLE)
    assert spec.threshold == Decimal("0.2")
    assert spec.for_seconds == 300
    doc = spec.document()
    assert doc["windowMinutes"] == 15 and doc["for"] == "5m" and doc["scope"] == {"country": "SN"}
    assert AlertRuleSpec.model_validate(doc) == spec


@pytest.mark.parametrize(
    "patch",
    [
        {"metric": "latency"},
        {"comparison": "eq"},
        {"windowMinutes": 0},
        {"for": "soon"},
        {"scope": {"country": "sen"}},
        {"notify": {"webhooks": [{"url": "ftp://x"}]}},
        {"unknown": 1},
        {"threshold": True},
    ],
)
def test_spec_rejects_bad_documents(patch: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AlertRuleSpec.model_validate({**SAMPLE, **patch})


async def test_save_update_status_and_delete(db: asyncpg.Connection) -> None:
    spec = AlertRuleSpec.model_validate(SAMPLE)
    rule_id = await save_rule(db, name="molam/high-failure-rate-sn", source="crd", spec=spec)
    row = await db.fetchrow("SELECT * FROM analytics_alert_rules WHERE id = $1", rule_id)
    assert row is not None
    assert (row["metric"], row["threshold"], row["window_minutes"], row["for_seconds"]) == (
        "failure_rate",
        Decimal("0.2"),
        15,
        300,
    )
    assert row["scope_country"] == "SN" and row["is_active"] is True

    disabled = AlertRuleSpec.model_validate({**SAMPLE, "enabled": False, "threshold": 0.3})
    assert await save_rule(db, name="molam/high-failure-rate-sn", source="crd", spec=disabled) == (
        rule_id
    )
    active = await db.fetchval("SELECT is_active FROM analytics_alert_rules WHERE id = $1", rule_id)
    assert active is False

    status = await rule_status(db, "molam/high-failure-rate-sn")
    assert status is not None and status.state == "Inactive" and status.last_fired_at is None
    assert await delete_rule(db, "molam/high-failure-rate-sn") is True
    assert await delete_rule(db, "molam/high-failure-rate-sn") is False
    assert await rule_status(db, "molam/high-failure-rate-sn") is None
