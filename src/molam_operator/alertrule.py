"""AlertRule: synced into ``analytics_alert_rules`` as "<namespace>/<name>" (source 'crd'), and
the evaluator's state mirrored back into the status.

Which database: the one of the AnalyticsPipeline in the rule's namespace (its
``spec.database.secretRef``; with several pipelines there, the rule's
``analytics.molam.io/pipeline`` label names one), else the operator's own DATABASE_URL.

A rule annotated ``analytics.molam.io/backtest-days: "7"`` also gets ``status.backtest``: when
it would have fired and resolved over that many past days (``core.backtest``), recomputed when
the spec or the annotation changes and every ``BACKTEST_REFRESH``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import kopf
from pydantic import SecretStr, ValidationError

from molam_operator import metrics
from molam_operator.conditions import iso, set_condition
from molam_operator.context import OperatorContext
from molam_operator.kube import KubeError
from molam_operator.settings import LABEL_RULE_PIPELINE
from molam_workloads.core.backtest import MAX_RANGE, backtest, load_rule
from molam_workloads.core.errors import ServiceUnavailable
from molam_workloads.core.faults import POSTGRES_DOWN, Outage, outage
from molam_workloads.core.rules import AlertRuleSpec, RuleStatus, delete_rule, save_rule

KIND = "AlertRule"
SOURCE = "crd"
RETRY_DELAY = 5.0
# The evaluator's states are read once per database and period for every rule's status timer.
STATES_TTL_SECONDS = 2.0
ANNOTATION_BACKTEST_DAYS = "analytics.molam.io/backtest-days"
# A backtest replays days of aggregates (about a second): redone on change, else hourly.
BACKTEST_REFRESH = timedelta(hours=1)
BACKTEST_FIRINGS_SHOWN = 10  # the latest ones; firingsTotal counts them all
# The set-wise twin of molam_workloads.core.rules.rule_status (same columns, same state rule).
_STATES_SQL = """
    SELECT r.name, r.is_active, s.state, s.last_value, s.last_evaluated_at, s.last_fired_at,
           s.current_alert_id, s.no_data_reason, d.at AS delivery_at, d.kind AS delivery_kind,
           d.destination AS delivery_destination, d.error AS delivery_error
    FROM analytics_alert_rules r
    LEFT JOIN analytics_alert_rule_state s ON s.rule_id = r.id
    LEFT JOIN LATERAL (
        SELECT at, kind, destination, error FROM analytics_alert_deliveries
        WHERE rule_name = r.name ORDER BY id DESC LIMIT 1) d ON true
    WHERE r.source = 'crd'
"""


@dataclass(frozen=True)
class PipelineDatabase:
    """One AnalyticsPipeline's database reference (what the pipelines index keeps)."""

    pipeline: str
    secret: str
    key: str
    reporting_currency: str = "USD"


@dataclass(frozen=True)
class Target:
    dsn: str
    where: str  # "pipeline/<name>" or "operator": shown in the status, never the DSN
    reporting_currency: str = "USD"


class SecretNotAllowed(kopf.PermanentError):
    """The rule needs a Secret outside OPERATOR_SECRET_ALLOW (the pipeline's database, a
    webhook's key): not retried until the rule or the operator's setting changes."""


def _check_secret(ctx: OperatorContext, name: str, what: str) -> None:
    if not ctx.settings.allow.secret_allowed(name):
        raise SecretNotAllowed(
            f"{what}: the operator may not read Secret {name!r} "
            f"(OPERATOR_SECRET_ALLOW: {', '.join(ctx.settings.allow.secrets)})"
        )


def rule_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def validation_message(exc: ValidationError) -> str:
    """One line naming each wrong field the way the CR spells it: ``spec.windowMinutes: ...``."""
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"spec{loc}: {err['msg']}")
    return "; ".join(parts)


def choose_pipeline(
    refs: Iterable[PipelineDatabase], labels: Mapping[str, str]
) -> PipelineDatabase | None:
    """The pipeline whose database holds the rule; raises PermanentError when ambiguous."""
    refs = sorted(refs, key=lambda r: r.pipeline)
    wanted = labels.get(LABEL_RULE_PIPELINE)
    if wanted:
        for ref in refs:
            if ref.pipeline == wanted:
                return ref
        raise kopf.TemporaryError(
            f"label {LABEL_RULE_PIPELINE}={wanted}: no such AnalyticsPipeline here", delay=10
        )
    if len(refs) > 1:
        names = ", ".join(r.pipeline for r in refs)
        raise kopf.PermanentError(
            f"several AnalyticsPipelines in the namespace ({names}): "
            f"label the rule {LABEL_RULE_PIPELINE}=<pipeline>"
        )
    return refs[0] if refs else None


async def target(
    ctx: OperatorContext,
    namespace: str,
    labels: Mapping[str, str],
    pipelines: Iterable[PipelineDatabase],
) -> Target | None:
    ref = choose_pipeline(pipelines, labels)
    if ref is not None:
        _check_secret(ctx, ref.secret, f"the database of pipeline {ref.pipeline!r}")
        try:
            dsn = await ctx.secret_value(namespace, ref.secret, ref.key)
        except KubeError as exc:
            raise kopf.TemporaryError(f"cannot read secret {ref.secret!r}: {exc}") from None
        if not dsn:
            raise kopf.TemporaryError(
                f"secret {ref.secret!r} (key {ref.key!r}) of pipeline {ref.pipeline!r} is missing",
                delay=RETRY_DELAY,
            )
        return Target(dsn, f"pipeline/{ref.pipeline}", ref.reporting_currency)
    if ctx.settings.operator_database_fallback:
        return Target(ctx.settings.database_url, "operator")
    return None


def database_wait(namespace: str, t: Target) -> Outage:
    """The operator's wait for one pipeline's database (``analytics_waiting_for{component=
    "operator", service="postgresql <namespace>/<where>"}``; Kopf's /healthz lists it)."""
    return outage("operator", f"postgresql {namespace}/{t.where}")


async def _connection_error(
    ctx: OperatorContext, t: Target, exc: Exception, namespace: str
) -> kopf.TemporaryError:
    metrics.RECONCILE_ERRORS.labels(KIND, type(exc).__name__).inc()
    if isinstance(exc, asyncpg.InterfaceError | OSError):
        await ctx.drop_pool(t.dsn)  # a stale pool: make a fresh one next time
    if isinstance(exc, asyncpg.UndefinedTableError):
        return kopf.TemporaryError(
            f"database of {t.where} has no analytics_alert_rules table: run "
            "'molam-analytics migrate'",
            delay=RETRY_DELAY * 2,
        )
    delay = RETRY_DELAY
    if isinstance(exc, (ServiceUnavailable, *POSTGRES_DOWN)):
        # Away (down, restarting): retried with the capped backoff, from 1 s up to 10 s, and
        # reported once per interval for all the rules of that database.
        wait = database_wait(namespace, t)
        wait.failed(exc, "syncing alert rules")
        delay = max(1.0, wait.delay())
    return kopf.TemporaryError(f"database of {t.where}: {exc}", delay=delay)


_DB_ERRORS = (
    ServiceUnavailable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


async def sync(
    ctx: OperatorContext,
    *,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    labels: Mapping[str, str],
    generation: int | None,
    status: Mapping[str, Any],
    pipelines: Iterable[PipelineDatabase],
    patch: kopf.Patch,
) -> None:
    """Create or update the rule's row (a disabled rule stays, with is_active = false)."""
    started = time.monotonic()
    conditions = list(status.get("conditions") or [])

    def synced(ok: bool, reason: str, message: str) -> None:
        patch.status["conditions"] = set_condition(
            conditions, "Synced", ok, reason, message, generation=generation
        )

    def failed(exc: Exception, reason: str) -> None:
        if isinstance(exc, SecretNotAllowed):
            reason = "SecretNotAllowed"
            metrics.RECONCILE_ERRORS.labels(KIND, reason).inc()
        synced(False, reason, str(exc))

    try:
        rule = AlertRuleSpec.model_validate(dict(spec))
    except ValidationError as exc:
        message = validation_message(exc)
        synced(False, "InvalidSpec", message)
        metrics.RECONCILE_ERRORS.labels(KIND, "InvalidSpec").inc()
        raise kopf.PermanentError(message) from None
    try:
        rule = await with_webhook_secrets(ctx, namespace, rule)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        failed(exc, "SecretUnavailable")
        raise
    try:
        t = await target(ctx, namespace, labels, pipelines)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        failed(exc, "NoDatabase")
        raise
    if t is None:
        synced(False, "NoDatabase", "no AnalyticsPipeline in the namespace")
        raise kopf.TemporaryError("no AnalyticsPipeline in the namespace", delay=30)
    try:
        pool = await ctx.pool(t.dsn)
        async with pool.acquire() as conn:
            rule_id = await save_rule(
                cast(asyncpg.Connection, conn),
                name=rule_name(namespace, name),
                source=SOURCE,
                spec=rule,
            )
    except _DB_ERRORS as exc:
        err = await _connection_error(ctx, t, exc, namespace)
        synced(False, "DatabaseUnavailable", str(err))
        raise err from None
    database_wait(namespace, t).recovered()
    patch.status["ruleId"] = str(rule_id)
    patch.status["database"] = t.where
    patch.status["observedGeneration"] = generation
    if "state" not in status:
        patch.status["state"] = "Inactive"
    synced(
        True,
        "Synced" if rule.enabled else "Disabled",
        f"rule {rule_name(namespace, name)} is in the database of {t.where}"
        + ("" if rule.enabled else " (disabled: is_active = false)"),
    )
    metrics.RECONCILE_SECONDS.labels(KIND).observe(time.monotonic() - started)


async def with_webhook_secrets(
    ctx: OperatorContext, namespace: str, rule: AlertRuleSpec
) -> AlertRuleSpec:
    """The rule with each ``secretRef`` webhook's signing key read from its Secret (the CR
    names the Secret; only the database row, never the CR, holds the key)."""
    if not any(w.secret_ref for w in rule.notify.webhooks):
        return rule
    hooks = []
    for w in rule.notify.webhooks:
        ref = w.secret_ref
        if ref is None:
            hooks.append(w)
            continue
        _check_secret(ctx, ref.name, "a webhook's signing key")
        try:
            value = await ctx.secret_value(namespace, ref.name, ref.key)
        except KubeError as exc:
            raise kopf.TemporaryError(
                f"cannot read secret {ref.name!r}: {exc}", delay=RETRY_DELAY
            ) from None
        if not value or len(value) < 16:
            raise kopf.TemporaryError(
                f"secret {ref.name!r} has no key {ref.key!r} of at least 16 characters",
                delay=RETRY_DELAY * 6,
            )
        hooks.append(w.model_copy(update={"secret": SecretStr(value)}))
    return rule.model_copy(update={"notify": rule.notify.model_copy(update={"webhooks": hooks})})


async def remove(
    ctx: OperatorContext,
    *,
    namespace: str,
    name: str,
    labels: Mapping[str, str],
    pipelines: Iterable[PipelineDatabase],
    logger: logging.Logger | kopf.Logger,
) -> None:
    """Delete the rule's row (its past alerts stay). Runs before Kopf drops the finalizer."""
    try:
        t = await target(ctx, namespace, labels, pipelines)
    except kopf.PermanentError as exc:
        logger.warning(f"not removing the rule from any database: {exc}")
        return
    except kopf.TemporaryError as exc:
        # The pipeline's Secret is gone (namespace being deleted): nothing left to clean.
        logger.warning(f"not removing the rule from the database: {exc}")
        return
    if t is None:
        return
    try:
        pool = await ctx.pool(t.dsn)
        async with pool.acquire() as conn:
            await delete_rule(cast(asyncpg.Connection, conn), rule_name(namespace, name))
    except asyncpg.UndefinedTableError:
        return
    except _DB_ERRORS as exc:
        raise await _connection_error(ctx, t, exc, namespace) from None


async def _load_states(ctx: OperatorContext, dsn: str) -> dict[str, RuleStatus]:
    pool = await ctx.pool(dsn)
    rows = await pool.fetch(_STATES_SQL)
    return {
        r["name"]: RuleStatus(
            state=((r["state"] or "inactive") if r["is_active"] else "inactive").capitalize(),
            last_value=r["last_value"],
            last_evaluated_at=r["last_evaluated_at"],
            last_fired_at=r["last_fired_at"],
            current_alert_id=r["current_alert_id"],
            last_delivery=_delivery(r),
            no_data_reason=r["no_data_reason"] if r["is_active"] else None,
        )
        for r in rows
    }


def _delivery(r: asyncpg.Record) -> dict[str, Any] | None:
    """status.lastDelivery: when, what kind, which host, and ``ok`` or the error."""
    if r["delivery_at"] is None:
        return None
    return {
        "at": iso(r["delivery_at"]),
        "kind": r["delivery_kind"],
        "destination": r["delivery_destination"],
        "result": r["delivery_error"] or "ok",
    }


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


async def mirror_status(
    ctx: OperatorContext,
    *,
    namespace: str,
    name: str,
    labels: Mapping[str, str],
    status: Mapping[str, Any],
    pipelines: Iterable[PipelineDatabase],
    patch: kopf.Patch,
    annotations: Mapping[str, str] | None = None,
) -> None:
    """Copy the evaluator's state of the rule into the status (only what changed), and the
    backtest the rule's annotation asks for."""
    try:
        t = await target(ctx, namespace, labels, pipelines)
    except (kopf.TemporaryError, kopf.PermanentError):
        return  # the Synced condition already says why
    if t is None:
        return
    try:
        states = await ctx.cached(
            ("rule-states", t.dsn), STATES_TTL_SECONDS, lambda: _load_states(ctx, t.dsn)
        )
    except _DB_ERRORS as exc:
        err = await _connection_error(ctx, t, exc, namespace)
        if database_wait(namespace, t).waiting:
            return  # reported by the wait; the timer looks again at its next tick
        raise err from None
    database_wait(namespace, t).recovered()
    st = states.get(rule_name(namespace, name))
    if st is None:
        return
    wanted = {
        "state": st.state,
        "lastValue": _number(st.last_value),
        "lastEvaluated": iso(st.last_evaluated_at),
        "lastFired": iso(st.last_fired_at),
        "currentAlertId": st.current_alert_id,
        "lastDelivery": st.last_delivery,
        "noDataReason": st.no_data_reason,
    }
    for key, value in wanted.items():
        if status.get(key) != value:
            patch.status[key] = value  # None removes the field (merge patch)
    try:
        await mirror_backtest(ctx, t, rule_name(namespace, name), annotations or {}, status, patch)
    except _DB_ERRORS as exc:
        raise await _connection_error(ctx, t, exc, namespace) from None


def backtest_days(annotations: Mapping[str, str]) -> int | str | None:
    """The annotation's number of days, None without it, or why it is wrong."""
    raw = annotations.get(ANNOTATION_BACKTEST_DAYS)
    if raw is None:
        return None
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_RANGE.days:
        return (
            f"{ANNOTATION_BACKTEST_DAYS} must be a whole number of days from 1 to {MAX_RANGE.days}"
        )
    return int(raw)


async def mirror_backtest(
    ctx: OperatorContext,
    t: Target,
    db_name: str,
    annotations: Mapping[str, str],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    now: datetime | None = None,
) -> None:
    """status.backtest from the annotation: computed when missing, when the days or the synced
    generation changed, and every BACKTEST_REFRESH; removed with the annotation."""
    days = backtest_days(annotations)
    current = status.get("backtest")
    if days is None:
        if current is not None:
            patch.status["backtest"] = None
        return
    generation = status.get("observedGeneration")
    if isinstance(days, str):
        wanted: dict[str, Any] = {"error": days}
        if current != wanted:
            patch.status["backtest"] = wanted
        return
    now = now or datetime.now(UTC)
    if current and current.get("days") == days and current.get("generation") == generation:
        computed = current.get("computedAt")
        if computed and now - datetime.fromisoformat(computed) < BACKTEST_REFRESH:
            return
    pool = await ctx.pool(t.dsn)
    async with pool.acquire() as conn:
        rule = await load_rule(conn, db_name)
        if rule is None:
            return  # not synced yet: the next tick
        result = await backtest(
            conn,
            rule,
            now - timedelta(days=days),
            now,
            reporting_currency=t.reporting_currency,
            now=now,
        )
    patch.status["backtest"] = {
        "days": days,
        "generation": generation,
        "computedAt": iso(now),
        **result.document(max_firings=BACKTEST_FIRINGS_SHOWN),
    }
