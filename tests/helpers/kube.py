"""The local cluster for the tests that drive it: kubectl, the CRDs and their samples, the
operator run in-process, and a stand-in kubelet where no node runs pods."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
import yaml
from kopf.testing import KopfRunner

from helpers.samples import sample as sample  # the cluster tests' import too
from molam_operator.kube import Kube, KubeError, path

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CACHE_DIR = Path(os.environ.get("MOLAM_CACHE_DIR") or Path.home() / ".cache" / "molam-analytics")
KUBECTL = CACHE_DIR / "k8s" / "bin" / "kubectl"

# `kubectl annotate namespace NAME <this>`: every pod of the namespace gets a node selector that
# no node matches (the apiserver's PodNodeSelector admission plugin), so it stays Pending. For
# tests of the operator's objects, which need no running pods, on a stack that has a node.
NO_PODS = "scheduler.alpha.kubernetes.io/node-selector=molam.io/no-pods=true"


def _kubectl_path() -> str:
    if KUBECTL.exists():
        return str(KUBECTL)
    return "kubectl"


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [_kubectl_path(), *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def kubectl_json(*args: str) -> Any:
    proc = kubectl(*args, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or "not found" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def condition(namespace: str, kind: str, name: str, type_: str) -> dict[str, Any]:
    """The ``type_`` condition in the status of ``kind`` ``name``; {} while it has none."""
    obj = kubectl_json("get", kind, name, "-n", namespace) or {}
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return {}


def apply(doc: dict[str, Any] | list[dict[str, Any]], *extra: str) -> str:
    docs = doc if isinstance(doc, list) else [doc]
    return kubectl("apply", *extra, "-f", "-", stdin=yaml.safe_dump_all(docs)).stdout


async def eventually(
    what: str, cond: Callable[[], Any], timeout: float = 30, interval: float = 0.2
) -> Any:
    """Poll ``cond`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = cond()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def pipeline_with_db(
    namespace: str,
    database_url: str,
    *,
    kafka: dict[str, Any] | None = None,
    consumer: dict[str, Any] | None = None,
    secret: str = "analytics-db",
    redis_secret: str = "analytics-redis",
    **spec: Any,
) -> list[dict[str, Any]]:
    """The AnalyticsPipeline ``analytics`` and the Secret holding its database URL.

    Without ``kafka`` the broker address is a closed port and the consumer polls once a minute:
    tests of the database side are not disturbed by lag probes. ``spec`` adds fields (api, ...).
    """
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret, "namespace": namespace},
            "stringData": {"url": database_url},
        },
        {
            "apiVersion": "analytics.molam.io/v1",
            "kind": "AnalyticsPipeline",
            "metadata": {"name": "analytics", "namespace": namespace},
            "spec": {
                "image": "molam-analytics:test",
                "kafka": kafka or {"bootstrapServers": "127.0.0.1:1"},
                "database": {"secretRef": {"name": secret}},
                "redis": {"secretRef": {"name": redis_secret}},
                "consumer": consumer or {"pollSeconds": 60},
                **spec,
            },
        },
    ]


@contextmanager
def running_operator(namespace: str) -> Iterator[KopfRunner]:
    """The operator, in a thread of this process, watching ``namespace`` only."""
    sys.modules.pop("molam_operator.main", None)  # re-register into the fresh registry
    runner = KopfRunner(
        ["run", "--standalone", "--namespace", namespace, "-m", "molam_operator.main"],
        registry=kopf.OperatorRegistry(),
        timeout=60,
    )
    with runner:
        yield runner


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def release_finalizers(namespace: str) -> None:
    """Drop the operator's finalizers from the namespace's custom resources.

    The operator is already stopped when a test's namespace goes: without this the namespace
    would stay Terminating for ever, and the next operator watching all namespaces would
    inherit its leftovers.
    """
    for kind in ("analyticspipelines", "alertrules"):
        proc = kubectl("get", kind, "-n", namespace, "-o", "name", check=False)
        for ref in proc.stdout.split():
            kubectl(
                "patch", ref, "-n", namespace, "--type=merge",
                "-p", '{"metadata": {"finalizers": null}}', check=False,
            )  # fmt: skip


class StandInKubelet:
    """Marks the namespace's unscheduled pods Running and Ready, as a kubelet does once their
    containers pass their readiness probes.

    A stand-in for what cannot run here: the local control plane has no node, so pods stay
    Pending and nothing else writes their status. Everything downstream is real: the ReplicaSet
    controller counts these pods available, the Deployment controller sums that into the
    Deployment's status, and the operator sees it through its watch. Pods that a scheduler did
    bind to a node are left to that node's kubelet.
    """

    def __init__(self, namespace: str, *, interval: float = 0.2) -> None:
        self.namespace = namespace
        self.interval = interval
        self.marked: set[str] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _mark(self, kube: Kube) -> None:
        for pod in await kube.list(path("v1", "pods", self.namespace)):
            meta, status = pod["metadata"], pod.get("status") or {}
            if pod["spec"].get("nodeName") or meta.get("deletionTimestamp"):
                continue
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in status.get("conditions") or []):  # fmt: skip
                continue
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            conditions = [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ]
            patch = {"status": {"phase": "Running", "startTime": now, "conditions": conditions}}
            try:
                await kube.patch(path("v1", "pods", self.namespace, meta["name"], "status"), patch)
            except KubeError as exc:
                if exc.status not in (404, 409):  # gone, or changed meanwhile: next round
                    raise
            else:
                self.marked.add(meta["name"])

    async def _run(self) -> None:
        kube = Kube.connect()
        try:
            while not self._stop.is_set():
                await self._mark(kube)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
        finally:
            await kube.close()

    async def __aenter__(self) -> StandInKubelet:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
