"""AnalyticsPipeline: its children kept in shape, its consumer scaled on lag, its status.

Three entry points, all serialised per pipeline by ``PipelineRuntime.lock``:

* :func:`reconcile` — parse the spec (spec.py), build every child (manifests.py) and create or
  patch it (called from the create/update/resume handlers and when a child drifts, drift.py);
* :func:`run` — the per-pipeline daemon: polls the lag every ``pollSeconds`` (read from the live
  spec, so a change applies at the next poll), scales, writes the status, re-checks the
  children as soon as a child watch kicks it, and judges Ready again when a child Deployment's
  pods become available or stop being (rollout.py);
* :func:`scale_once` — one poll: probe, decide (scaling.py, pure), apply, report.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import kopf

from molam_operator import manifests, metrics, rollout
from molam_operator.allowlist import Refusal
from molam_operator.conditions import iso, now_iso, set_condition
from molam_operator.context import OperatorContext, PipelineRuntime
from molam_operator.drift import drifted
from molam_operator.kafka_access import KafkaAccess, KafkaSecretMissing
from molam_operator.kafka_access import resolve as resolve_kafka_access
from molam_operator.kube import STRATEGIC, KubeError, object_path, path
from molam_operator.scaling import Decision, LagObservation, ProbeFailure, Reason, decide
from molam_operator.settings import GROUP, VERSION
from molam_operator.spec import InvalidSpec, PipelineConfig, parse_spec
from molam_workloads.core.errors import ServiceUnavailable
from molam_workloads.core.faults import forget, outage

KIND = "AnalyticsPipeline"
PLURAL = "analyticspipelines"
API_VERSION = f"{GROUP}/{VERSION}"
REFRESHED_VIEW = "mv_txn_daily_agg"


# ------------------------------------------------------------------------------- children


def _strip_for_patch(desired: dict[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """What to patch onto an existing child: the desired object minus fields owned elsewhere.

    * the consumer's replicas belong to the scaler;
    * the API's replicas are re-applied only when spec.api.replicas changed (tracked in an
      annotation), so a `kubectl scale deployment <name>-api` from the runbook holds meanwhile.
    """
    out = copy.deepcopy(desired)
    if out["kind"] != "Deployment":
        return out
    component = out["metadata"]["labels"].get("app.kubernetes.io/component")
    live_ann = (live.get("metadata") or {}).get("annotations") or {}
    if component == "consumer":
        out["spec"].pop("replicas", None)
        # The scaler's own bookkeeping annotation is not the spec's to set.
        out["metadata"].get("annotations", {}).pop(manifests.SCALED_REPLICAS_ANNOTATION, None)
    elif component == "api":
        want = out["metadata"]["annotations"].get(manifests.API_REPLICAS_ANNOTATION)
        if live_ann.get(manifests.API_REPLICAS_ANNOTATION) == want:
            out["spec"].pop("replicas", None)
    return out


async def ensure_child(ctx: OperatorContext, desired: dict[str, Any]) -> str:
    """Create the child or patch it back into shape: 'created', 'patched' or 'unchanged'."""
    url = object_path(desired)
    live = await ctx.kube.get(url)
    if live is None:
        try:
            await ctx.kube.create(desired)
            return "created"
        except KubeError as exc:
            if exc.status != 409:  # 409: created meanwhile (e.g. by a previous operator run)
                raise
            live = await ctx.kube.get(url)
            if live is None:
                raise
    patch = _strip_for_patch(desired, live)
    if not drifted(patch, live):
        return "unchanged"
    await ctx.kube.patch(url, patch, content_type=STRATEGIC)
    return "patched"


async def secrets_digest(ctx: OperatorContext, namespace: str, cfg: PipelineConfig) -> str:
    """The digest of the Secret values the pods read (each read cached ``SECRET_TTL_SECONDS``):
    a rotation rolls the pods at the next reconcile, a resync at the latest."""
    refs = manifests.secret_refs(cfg)
    values = await asyncio.gather(*(ctx.secret_value(namespace, r.name, r.key) for r in refs))
    return manifests.secrets_digest({(r.name, r.key): v for r, v in zip(refs, values, strict=True)})


async def kafka_access(ctx: OperatorContext, namespace: str, cfg: PipelineConfig) -> KafkaAccess:
    """How the lag probe reaches the pipeline's Kafka: the pods' settings, with the Secret
    values they mount read through the API (same cache as the digest)."""
    refs = cfg.kafka_security.refs()
    values = await asyncio.gather(*(ctx.secret_value(namespace, r.name, r.key) for r in refs))
    return resolve_kafka_access(
        cfg.bootstrap_servers, cfg.kafka_security, dict(zip(refs, values, strict=True))
    )


def refused(ctx: OperatorContext, cfg: PipelineConfig) -> Refusal | None:
    """Why the operator's allow-lists refuse the pipeline (its image, a Secret it names)."""
    return ctx.settings.allow.refusal(cfg.image, (r.name for r in manifests.secret_refs(cfg)))


def build(
    ctx: OperatorContext, body: kopf.Body, cfg: PipelineConfig, secrets: str
) -> list[dict[str, Any]]:
    children = manifests.build_children(
        body.meta["name"], cfg, cron_job_api_version=ctx.cron_job_api_version, secrets=secrets
    )
    # Owner reference (garbage collection when the pipeline goes), namespace, owner's labels.
    kopf.adopt(children, owner=body)
    for child in children:
        if child["kind"] == "Deployment" and manifests.component_of(child) == "consumer":
            replicas = str(child["spec"].get("replicas", 0))
            child["metadata"]["annotations"][manifests.SCALED_REPLICAS_ANNOTATION] = replicas
    return children


async def reconcile(
    ctx: OperatorContext,
    body: kopf.Body,
    *,
    logger: logging.Logger | kopf.Logger,
    cause: str,
    unless_started_after: float | None = None,
) -> dict[str, str]:
    """Bring every child in shape; returns {child name: outcome}. Retries on API errors.

    ``unless_started_after``: skip if another reconcile started after that instant (it saw
    whatever this one was asked to look at).
    """
    namespace, name = body.meta["namespace"], body.meta["name"]
    rt = ctx.runtime(namespace, name)
    try:
        cfg = parse_spec(body.spec)
    except InvalidSpec as exc:
        metrics.RECONCILE_ERRORS.labels(KIND, "InvalidSpec").inc()
        await _set_not_ready(ctx, body, rt, "InvalidSpec", str(exc))
        raise kopf.PermanentError(str(exc)) from None
    refusal = refused(ctx, cfg)
    if refusal is not None:
        # Nothing is created or changed: children already there keep their last allowed shape.
        metrics.RECONCILE_ERRORS.labels(KIND, refusal.reason).inc()
        await _set_not_ready(ctx, body, rt, refusal.reason, refusal.message)
        raise kopf.PermanentError(refusal.message)
    started = time.monotonic()
    async with rt.lock:
        if unless_started_after is not None and rt.last_started > unless_started_after:
            return {}
        rt.last_started = time.monotonic()
        outcomes: dict[str, str] = {}
        try:
            digest = await secrets_digest(ctx, namespace, cfg)
        except KubeError as exc:
            metrics.RECONCILE_ERRORS.labels(KIND, "SecretUnreadable").inc()
            with contextlib.suppress(KubeError):
                await _set_not_ready(ctx, body, rt, "SecretUnreadable", str(exc))
            # Not guessed: a wrong digest would roll every pod.
            raise kopf.TemporaryError(
                f"cannot read a Secret the pods use: {exc}", delay=10
            ) from None
        try:
            config, *workloads = build(ctx, body, cfg, digest)
            # The config first (pods refer to it), then the rest side by side.
            done = [await ensure_child(ctx, config)]
            done += await asyncio.gather(*(ensure_child(ctx, c) for c in workloads))
            for child, outcome in zip([config, *workloads], done, strict=True):
                outcomes[f"{child['kind']}/{child['metadata']['name']}"] = outcome
        except KubeError as exc:
            metrics.RECONCILE_ERRORS.labels(KIND, exc.reason or str(exc.status)).inc()
            with contextlib.suppress(KubeError):  # the API may be what is failing
                await _set_not_ready(ctx, body, rt, "ChildrenFailed", str(exc))
            if exc.status in (400, 403, 422):
                raise kopf.PermanentError(f"cannot write a child: {exc}") from None
            raise kopf.TemporaryError(f"cannot write a child: {exc}", delay=5) from None
        rt.last_resync = time.monotonic()
        rt.observed_generation = body.meta.get("generation")
        changed = {k: v for k, v in outcomes.items() if v != "unchanged"}
        if changed:
            logger.info(f"{cause}: {changed}")
            if cause == "drift":
                for key in changed:
                    metrics.CHILDREN_RESTORED.labels(key.split("/")[0]).inc()
                kopf.event(
                    body,
                    type="Normal",
                    reason="ChildrenRestored",
                    message=", ".join(f"{k} {v}" for k, v in sorted(changed.items())),
                )
        rt.children_ok = True
        try:
            await refresh_ready(ctx, body, rt)
        except KubeError as exc:
            rt.rollouts_changed = True  # the children are in shape: the daemon judges Ready later
            logger.warning(f"cannot judge the children's rollouts: {exc}")
    metrics.RECONCILE_SECONDS.labels(KIND).observe(time.monotonic() - started)
    return outcomes


def _ready_fields(ctx: OperatorContext, body: kopf.Body) -> dict[str, Any]:
    return {
        "apiSelector": manifests.api_selector(body.meta["name"]),
        "cronJobApiVersion": ctx.cron_job_api_version,
    }


async def _set_not_ready(
    ctx: OperatorContext, body: kopf.Body, rt: PipelineRuntime, reason: str, message: str
) -> None:
    """Ready=False because the children could not be brought in shape (spec, Secret, API)."""
    rt.children_ok = False
    await write_status(
        ctx, body, rt, _ready_fields(ctx, body), conditions=[("Ready", False, reason, message)]
    )


async def refresh_ready(ctx: OperatorContext, body: kopf.Body, rt: PipelineRuntime) -> None:
    """Ready from the child Deployments' rollouts, once the children are in shape.

    Call with ``rt.lock`` held. The Deployments are found by their labels (instance, component),
    and judged as ``kubectl rollout status`` does (rollout.py).
    """
    if not rt.children_ok:
        return
    rt.rollouts_changed = False  # an event from now on asks for another look
    namespace, name = body.meta["namespace"], body.meta["name"]
    deployments = await ctx.kube.list(
        path("apps/v1", "Deployment", namespace), label_selector=manifests.children_selector(name)
    )
    state = rollout.availability(name, deployments)
    fields = _ready_fields(ctx, body)
    if rt.observed_generation is not None:
        fields["observedGeneration"] = rt.observed_generation
    for dep in deployments:
        if manifests.component_of(dep) == "api":
            fields["apiReplicas"] = int((dep.get("spec") or {}).get("replicas", 0))
    await write_status(
        ctx, body, rt, fields, conditions=[("Ready", state.ok, state.reason, state.message)]
    )


# -------------------------------------------------------------------------------- status


def _conditions(rt: PipelineRuntime, body: kopf.Body) -> list[dict[str, Any]]:
    if rt.conditions is None:
        rt.conditions = [dict(c) for c in body.status.get("conditions") or []]
    return rt.conditions


def _phase(conditions: list[dict[str, Any]], paused: bool) -> str:
    by_type = {c["type"]: c for c in conditions}
    ready = by_type.get("Ready")
    if ready is None:
        return "Pending"
    waiting = ready["status"] != "True" and ready["reason"] == rollout.WAITING_REASON
    # A problem first (the spec, the API, a rollout past its progress deadline, the lag probe
    # while the consumer should run), then pods still starting, then the user's pause.
    if ready["status"] != "True" and not waiting:
        return "Degraded"
    probe = by_type.get("LagProbe")
    if not paused and probe is not None and probe["status"] == "False":
        return "Degraded"
    if waiting:
        return "Pending"
    return "Paused" if paused else "Running"


async def write_status(
    ctx: OperatorContext,
    body: kopf.Body,
    rt: PipelineRuntime,
    fields: dict[str, Any],
    *,
    conditions: Sequence[tuple[str, bool | None, str, str]] = (),
    phase: str | None = None,
) -> None:
    """Merge-patch the status subresource (only what changed since the last write)."""
    conds = _conditions(rt, body)
    generation = body.meta.get("generation")
    for type_, ok, reason, message in conditions:
        conds = set_condition(conds, type_, ok, reason, message, generation=generation)
    rt.conditions = conds
    paused = bool((body.spec.get("consumer") or {}).get("paused")) or any(
        c["type"] == "Scaling" and c["reason"] in (Reason.paused, Reason.paused_by_hand)
        for c in conds
    )
    status = {**fields, "conditions": conds, "phase": phase or _phase(conds, paused)}
    delta = {k: v for k, v in status.items() if rt.last_status.get(k) != v}
    if not delta:
        return
    url = path(API_VERSION, PLURAL, body.meta["namespace"], body.meta["name"], "status")
    try:
        await ctx.kube.patch(url, {"status": delta})
    except KubeError as exc:
        if exc.status == 404:  # being deleted
            return
        raise
    rt.last_status.update(delta)


# -------------------------------------------------------------------------------- scaling


def _deployment_path(namespace: str, pipeline: str, component: str) -> str:
    return path("apps/v1", "Deployment", namespace, manifests.child_name(pipeline, component))


async def _consumer(ctx: OperatorContext, namespace: str, name: str) -> dict[str, Any] | None:
    return await ctx.kube.get(_deployment_path(namespace, name, "consumer"))


async def last_refresh(
    ctx: OperatorContext, namespace: str, name: str, cfg: PipelineConfig
) -> str | None:
    """When the view was last refreshed: from the database, else the CronJob's last run."""
    try:
        dsn = await ctx.secret_value(namespace, cfg.database.name, cfg.database.key)
    except KubeError:
        dsn = None
    if dsn:
        try:
            pool = await ctx.pool(dsn)
            at = await pool.fetchval(
                "SELECT refreshed_at FROM analytics_view_refreshes WHERE view_name = $1",
                REFRESHED_VIEW,
            )
            if at is not None:
                return iso(at)
        except (ServiceUnavailable, asyncpg.PostgresError, OSError, TimeoutError):
            pass
    cron = await ctx.kube.get(
        path(
            ctx.cron_job_api_version,
            "CronJob",
            namespace,
            manifests.child_name(name, "refresh-views"),
        )
    )
    value = ((cron or {}).get("status") or {}).get("lastScheduleTime")
    return str(value) if value else None


def broker_service(namespace: str, name: str) -> str:
    return f"kafka {namespace}/pipeline/{name}"


def broker_wait(
    namespace: str, name: str, observation: LagObservation | ProbeFailure, message: str
) -> None:
    """The operator's wait for a pipeline's broker (``analytics_waiting_for{component=
    "operator", service="kafka <namespace>/pipeline/<name>"}``; Kopf's /healthz lists it): a
    poll that cannot reach it is reported once per interval, not once per poll, and one the
    broker answered (a lag, or no such topic) ends the wait. Replicas are held meanwhile
    (``scaling.decide``)."""
    wait = outage("operator", broker_service(namespace, name))
    if observation is ProbeFailure.broker_unreachable:
        wait.failed(ServiceUnavailable(message), "lag probe")
    elif isinstance(observation, LagObservation) or observation is ProbeFailure.topic_not_found:
        wait.recovered()


async def scale_once(
    ctx: OperatorContext,
    body: kopf.Body,
    cfg: PipelineConfig,
    rt: PipelineRuntime,
    *,
    logger: logging.Logger | kopf.Logger,
) -> Decision | None:
    """One poll: measure the lag, decide, set the consumer's replicas, report."""
    namespace, name = body.meta["namespace"], body.meta["name"]
    labels = (namespace, name)
    observation: LagObservation | ProbeFailure
    try:
        access = await kafka_access(ctx, namespace, cfg)
    except KafkaSecretMissing as exc:
        observation, probe_message = ProbeFailure.kafka_secret_missing, str(exc)
    else:
        observation, probe_message = await ctx.prober.probe(
            access,
            cfg.consumer_group,
            cfg.topic,
            timeout=ctx.settings.operator_kafka_timeout_seconds,
        )
    broker_wait(namespace, name, observation, probe_message)
    consumer = await _consumer(ctx, namespace, name)
    if consumer is None:  # being (re)created: check the children next time round
        rt.recheck = True
        return None
    current = int((consumer.get("spec") or {}).get("replicas", 1))
    scaled = ((consumer.get("metadata") or {}).get("annotations") or {}).get(
        manifests.SCALED_REPLICAS_ANNOTATION
    )
    paused_by_hand = (
        current == 0 and not cfg.scaling.paused and scaled is not None and scaled != "0"
    )
    decision = decide(
        cfg.scaling,
        current=current,
        observation=observation,
        now=time.monotonic(),
        memory=rt.scaler,
        paused_by_hand=paused_by_hand,
    )
    rt.scaler = decision.memory
    if decision.desired != current:
        url = _deployment_path(namespace, name, "consumer")
        await ctx.kube.patch(
            url,
            {
                "metadata": {
                    "annotations": {manifests.SCALED_REPLICAS_ANNOTATION: str(decision.desired)}
                },
                "spec": {"replicas": decision.desired},
            },
        )
        direction = "up" if decision.desired > current else "down"
        metrics.SCALE_EVENTS.labels(*labels, direction).inc()
        rt.last_scale_time = now_iso()
        rt.last_scale_reason = f"{decision.reason}: {decision.message}"
        kopf.event(
            body,
            type="Normal",
            reason=f"Consumer{decision.reason}",
            message=(
                f"{manifests.child_name(name, 'consumer')} {current} -> {decision.desired}: "
                f"{decision.message}"
            ),
        )
        logger.info(f"consumer {current} -> {decision.desired}: {decision.message}")
        current = decision.desired

    fields: dict[str, Any] = {
        "currentReplicas": current,
        "desiredReplicas": decision.desired,
        "lastPollTime": now_iso(),
    }
    conditions: list[tuple[str, bool | None, str, str]] = []
    if isinstance(observation, LagObservation):
        fields.update(lag=observation.lag, partitions=observation.partitions)
        conditions.append(("LagProbe", True, "LagMeasured", probe_message))
    else:
        metrics.LAG_PROBE_ERRORS.labels(*labels, observation.value).inc()
        conditions.append(("LagProbe", False, observation.value, probe_message))
    active = decision.reason not in (Reason.paused, Reason.paused_by_hand, Reason.holding)
    conditions.append(("Scaling", active, decision.reason.value, decision.message))
    if rt.scaler.arrival_rate is not None:
        fields["arrivalRate"] = round(rt.scaler.arrival_rate, 3)
    if rt.scaler.replica_rate is not None:
        fields["consumeRatePerReplica"] = round(rt.scaler.replica_rate, 3)
    if rt.last_scale_time:
        fields["lastScaleTime"] = rt.last_scale_time
        fields["lastScaleReason"] = rt.last_scale_reason
    refreshed = await last_refresh(ctx, namespace, name, cfg)
    if refreshed:
        fields["lastRefreshTime"] = refreshed
    # One poll's gauges are published together (no await between them), so a scrape never
    # sees this poll's lag beside the previous poll's replica counts.
    if isinstance(observation, LagObservation):
        metrics.CONSUMER_LAG.labels(*labels).set(observation.lag)
    metrics.DESIRED_REPLICAS.labels(*labels).set(decision.desired)
    metrics.CURRENT_REPLICAS.labels(*labels).set(current)
    await write_status(ctx, body, rt, fields, conditions=conditions)
    return decision


# --------------------------------------------------------------------------------- daemon


async def _nap(rt: PipelineRuntime, stopped: kopf.DaemonStopped, seconds: float) -> None:
    """Sleep up to ``seconds``; wake early when kicked or when the daemon is asked to stop."""
    if stopped or rt.wakeup.is_set() or seconds <= 0:
        return
    kicked = asyncio.ensure_future(rt.wakeup.wait())
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({kicked, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        kicked.cancel()
        stopping.cancel()


async def run(
    ctx: OperatorContext,
    body: kopf.Body,
    *,
    stopped: kopf.DaemonStopped,
    logger: logging.Logger | kopf.Logger,
) -> None:
    """The pipeline's daemon: poll and scale every pollSeconds, repair children when kicked,
    judge Ready again when a child Deployment's pods become available (or stop being)."""
    namespace, name = body.meta["namespace"], body.meta["name"]
    rt = ctx.runtime(namespace, name)
    next_poll = 0.0
    try:
        while not stopped:
            try:
                cfg = parse_spec(body.spec)  # the live spec: changes apply at once
            except InvalidSpec:
                await _nap(rt, stopped, 5)
                continue
            if refused(ctx, cfg) is not None:  # Ready=False says why; no Secret is read
                await _nap(rt, stopped, 5)
                continue
            now = time.monotonic()
            resync = now - rt.last_resync >= ctx.settings.operator_resync_seconds
            rt.wakeup.clear()
            if rt.recheck or resync:
                rt.recheck = False
                # Changes found by a kick or a resync after the first pass are hand edits.
                cause = "drift" if rt.last_resync else "startup"
                try:
                    await reconcile(ctx, body, logger=logger, cause=cause, unless_started_after=now)
                except (kopf.TemporaryError, kopf.PermanentError) as exc:
                    logger.warning(f"children not in shape: {exc}")
            if rt.rollouts_changed and rt.children_ok:
                try:
                    async with rt.lock:
                        await refresh_ready(ctx, body, rt)
                except KubeError as exc:
                    rt.rollouts_changed = True  # look again after the nap
                    logger.warning(f"cannot judge the children's rollouts: {exc}")
            if rt.poll_now or time.monotonic() >= next_poll:
                rt.poll_now = False
                next_poll = time.monotonic() + cfg.scaling.poll_seconds
                try:
                    async with rt.lock:
                        await scale_once(ctx, body, cfg, rt, logger=logger)
                except KubeError as exc:
                    metrics.RECONCILE_ERRORS.labels(KIND, "scale").inc()
                    logger.warning(f"scaling poll failed: {exc}")
                except Exception:  # a bug must not stop this pipeline's scaling for good
                    metrics.RECONCILE_ERRORS.labels(KIND, "scale-unexpected").inc()
                    logger.exception("scaling poll failed unexpectedly")
            await _nap(rt, stopped, max(0.0, next_poll - time.monotonic()))
    finally:
        if stopped.reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in (
            stopped.reason
        ):
            ctx.forget(namespace, name)
            forget("operator", broker_service(namespace, name))  # no broker left to wait for
