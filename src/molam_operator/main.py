"""Kopf registrations, nothing else: each handler checks its preconditions and awaits the typed
coroutine that does the work (startup.py, pipeline.py, alertrule.py).

Run with ``molam-analytics operator`` (command.py), or ``kopf run -m molam_operator.main``.

Handlers name only the keyword arguments they use (plus indices, which Kopf passes by the
index's name); Kopf's handler protocols list every possible keyword, which such handlers do
not match structurally, hence the disabled ``arg-type`` check for the decorators below.
"""
# mypy: disable-error-code="arg-type"

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from molam_operator import alertrule, pipeline, rollout, startup
from molam_operator.alertrule import PipelineDatabase
from molam_operator.context import get_context
from molam_operator.settings import GROUP, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, VERSION
from molam_workloads.core import faults

PIPELINES = (GROUP, VERSION, "analyticspipelines")
RULES = (GROUP, VERSION, "alertrules")
CHILD: Mapping[str, Any] = {
    LABEL_MANAGED_BY: MANAGED_BY,
    LABEL_INSTANCE: kopf.PRESENT,
}
# How often an AlertRule's status mirrors the evaluator: within seconds of a change.
RULE_STATUS_SECONDS = 5.0


# ---------------------------------------------------------------------------- lifecycle


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    await startup.configure(settings, memo, logger)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Explicit (not only Kopf's implicit default) so a fresh registry, as in tests, logs in too:
    # the in-cluster service account or KUBECONFIG, read by the kubernetes client library.
    return kopf.login_via_client(**kwargs)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await startup.cleanup(memo)


@kopf.on.probe(id="waiting_for")
def waiting_for(**_: Any) -> list[str]:
    """In Kopf's liveness answer (/healthz): the databases the operator is waiting for."""
    return faults.waiting("operator")


# ---------------------------------------------------------------------- AnalyticsPipeline


@kopf.index(*PIPELINES)
def pipeline_databases(
    namespace: str, name: str, spec: kopf.Spec, **_: Any
) -> dict[str, PipelineDatabase]:
    """namespace -> the database reference of each pipeline there (for AlertRules)."""
    ref = (spec.get("database") or {}).get("secretRef") or {}
    return {
        namespace: PipelineDatabase(
            name,
            str(ref.get("name", "")),
            str(ref.get("key", "url")),
            str(spec.get("reportingCurrency", "USD")),
        )
    }


@kopf.on.resume(*PIPELINES)
@kopf.on.create(*PIPELINES)
@kopf.on.update(*PIPELINES)
async def reconcile_pipeline(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, reason: str, **_: Any
) -> None:
    ctx = get_context(memo)
    await pipeline.reconcile(ctx, body, logger=logger, cause=str(reason))
    # Scaling settings (paused, bounds) apply now rather than at the next poll.
    ctx.poll_now(body.meta["namespace"], body.meta["name"])


@kopf.daemon(*PIPELINES, cancellation_backoff=5, cancellation_timeout=5)
async def scale_pipeline(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any
) -> None:
    # A daemon, not a timer: each pipeline polls every spec.consumer.pollSeconds (read from the
    # live spec, so a change applies at the next poll), and a child watch can wake it at once.
    await pipeline.run(get_context(memo), body, stopped=stopped, logger=logger)


# Children deleted or edited by hand: wake their pipeline's daemon, which re-checks them now;
# a Deployment whose pods became available (or stopped being): it judges Ready again.
@kopf.on.event("apps", "v1", "deployments", labels=CHILD)
@kopf.on.event("", "v1", "services", labels=CHILD)
@kopf.on.event("", "v1", "configmaps", labels=CHILD)
@kopf.on.event("batch", "v1", "cronjobs", labels=CHILD)
@kopf.on.event("batch", "v1beta1", "cronjobs", labels=CHILD)
async def child_changed(
    type: str | None,
    resource: kopf.Resource,
    body: kopf.Body,
    namespace: str,
    uid: str,
    meta: kopf.Meta,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    get_context(memo).child_event(
        type,
        uid=uid,
        generation=meta.get("generation"),
        namespace=namespace,
        pipeline=labels[LABEL_INSTANCE],
        rollout=rollout.signature(body) if resource.plural == "deployments" else None,
    )


# ------------------------------------------------------------------------------ AlertRule


@kopf.on.resume(*RULES)
@kopf.on.create(*RULES)
@kopf.on.update(*RULES)
async def sync_rule(
    namespace: str,
    name: str,
    spec: kopf.Spec,
    labels: kopf.Labels,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    pipeline_databases: kopf.Index[str, PipelineDatabase],
    **_: Any,
) -> None:
    await alertrule.sync(
        get_context(memo),
        namespace=namespace,
        name=name,
        spec=spec,
        labels=labels,
        generation=meta.get("generation"),
        status=status,
        pipelines=pipeline_databases.get(namespace, []),
        patch=patch,
    )


@kopf.on.delete(*RULES)
async def delete_rule(
    namespace: str,
    name: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    logger: kopf.Logger,
    pipeline_databases: kopf.Index[str, PipelineDatabase],
    **_: Any,
) -> None:
    await alertrule.remove(
        get_context(memo),
        namespace=namespace,
        name=name,
        labels=labels,
        pipelines=pipeline_databases.get(namespace, []),
        logger=logger,
    )


@kopf.timer(*RULES, interval=RULE_STATUS_SECONDS, initial_delay=1)
async def mirror_rule_status(
    namespace: str,
    name: str,
    labels: kopf.Labels,
    annotations: kopf.Annotations,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    pipeline_databases: kopf.Index[str, PipelineDatabase],
    **_: Any,
) -> None:
    await alertrule.mirror_status(
        get_context(memo),
        namespace=namespace,
        name=name,
        labels=labels,
        status=status,
        pipelines=pipeline_databases.get(namespace, []),
        patch=patch,
        annotations=annotations,
    )
