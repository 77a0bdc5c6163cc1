"""Kopf tuning and the operator's resources: every setting in one place, each with its reason."""

from __future__ import annotations

import logging

import kopf

from molam_operator.context import MEMO_KEY, OperatorContext
from molam_operator.kube import Kube
from molam_operator.settings import GROUP, OperatorSettings
from molam_workloads.core.faults import quiet_kafka_reconnects
from molam_workloads.core.metrics import serve_metrics
from molam_workloads.core.settings import load_settings

FINALIZER = f"{GROUP}/finalizer"


def tune(settings: kopf.OperatorSettings) -> None:
    # Watches: without a server-side timeout a watch that the network silently drops can hang
    # forever and the operator stops seeing changes (kopf#585). Ask the API server to end each
    # watch after 5 minutes (Kopf then re-lists and re-watches), let the client give up a bit
    # later if even that answer never arrives, and do not wait long for a connection.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Plain API calls: fail fast and retry rather than sit on a dead connection.
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Our own finalizer name, so `kubectl get -o yaml` says who holds an AlertRule's deletion
    # (it is removed once the rule's row is deleted).
    settings.persistence.finalizer = FINALIZER
    # Kopf's progress (retries, handler outcomes) and the last handled spec go to annotations:
    # our status schemas are strict (no x-kubernetes-preserve-unknown-fields), so anything Kopf
    # wrote into .status.kopf would be pruned by the API server and handlers would re-run.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Kubernetes Events: our explicit ones (scaling, restored children) always; from the logs,
    # only warnings and errors (failed handlers), so `kubectl describe` is not flooded with
    # "handler succeeded" for every reconcile of every pipeline.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    # One operator replica (the chart deploys it with strategy Recreate): no peering objects
    # to install or keep alive, no pause while an old pod is terminating.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Our handlers raise TemporaryError with their own delays; anything else (a bug, an API
    # failure nobody foresaw) is retried after 10 s rather than Kopf's default minute.
    settings.execution.default_backoff = 10
    # Only login_via_client and the pipelines index are synchronous: a small thread pool.
    settings.execution.max_workers = 4


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger) -> None:
    """The startup handler: tune Kopf, connect to the API server, open the metrics port."""
    tune(settings)
    quiet_kafka_reconnects()  # the lag probe's clients, while a pipeline's broker is away
    ops = load_settings(OperatorSettings)
    kube = Kube.connect()
    # batch/v1 CronJob from Kubernetes 1.21; 1.20 (the local control plane) serves v1beta1 only.
    cron = "batch/v1" if await kube.serves("batch/v1", "cronjobs") else "batch/v1beta1"
    memo[MEMO_KEY] = OperatorContext(settings=ops, kube=kube, cron_job_api_version=cron)
    if ops.operator_metrics_port and not memo.get("metrics_served"):
        serve_metrics(ops.operator_metrics_port, ops.operator_metrics_address)
        memo["metrics_served"] = True
    logger.info(f"CronJobs as {cron}; metrics on :{ops.operator_metrics_port or '-'}")


async def cleanup(memo: kopf.Memo) -> None:
    ctx = memo.get(MEMO_KEY)
    if isinstance(ctx, OperatorContext):
        await ctx.close()
