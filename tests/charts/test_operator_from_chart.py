"""The operator started from what the chart rendered: its ServiceAccount and RBAC, its command
line, its environment and its liveness probe — against the real kube-apiserver.

The chart is rendered and applied; the operator then runs here (there is no kubelet) as the
rendered container would: the image's entrypoint with the Deployment's args, the env the pod
would get (ConfigMap, field refs, secret refs), and a kubeconfig holding a token of the chart's
ServiceAccount. A sample AnalyticsPipeline and AlertRule must then be reconciled with no
permission error, so a missing or wrong RBAC rule, arg or value fails here rather than for a user.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from helpers.samples import sample

from .conftest import (
    Renderer,
    dump_all,
    find,
    kubectl,
    kubectl_json,
    new_namespace,
)

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("crds_installed")]

ENTRYPOINT = Path(sys.executable).with_name("molam-analytics")  # the image's ENTRYPOINT
# What a missing RBAC rule looks like in the operator's log: the API server's RBAC denial
# ('User "system:serviceaccount:..." cannot get resource ...') and Kopf's own warning. Other 403s
# (e.g. creating in a namespace being terminated, left over by another test) are not RBAC's.
PERMISSION_ERRORS = (re.compile(r"cannot \w+ resource"), re.compile(r"not enough permissions"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, cond: Callable[[], Any], timeout: float = 60, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text().splitlines()[-40:]) if log else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.5)


def service_account_token(namespace: str, name: str) -> str:
    """A token for the ServiceAccount: the TokenRequest API (1.20+), else its legacy Secret."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    proc = kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        "-f",
        "-",
        stdin=json.dumps(request),
        check=False,
    )
    if proc.returncode == 0:
        return str(json.loads(proc.stdout)["status"]["token"])

    def secret_name() -> str | None:
        sa = kubectl_json("get", "serviceaccount", name, "-n", namespace)
        return next((s["name"] for s in sa.get("secrets") or []), None)

    secret = wait_until(f"a token Secret for {namespace}/{name}", secret_name)
    data = kubectl_json("get", "secret", secret, "-n", namespace)["data"]
    return base64.b64decode(data["token"]).decode()


def service_account_kubeconfig(path: Path, namespace: str, name: str) -> Path:
    admin = kubectl_json("config", "view", "--raw", "--minify")
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": service_account_token(namespace, name)}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": name}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def container_env(container: dict[str, Any], namespace: str, pod: str) -> dict[str, str]:
    """The environment Kubernetes would give the container, resolved from the cluster."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = kubectl_json("get", "configmap", source["configMapRef"]["name"], "-n", namespace)
            env.update(cm.get("data") or {})
        elif "secretRef" in source:
            secret = kubectl_json("get", "secret", source["secretRef"]["name"], "-n", namespace)
            env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    fields = {"metadata.namespace": namespace, "metadata.name": pod}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = kubectl_json("get", "secret", ref["name"], "-n", namespace)
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        else:
            pytest.fail(f"unsupported env source in the chart: {item}")
    return env


@dataclass
class RunningOperator:
    namespace: str  # the release namespace
    watched: str  # a namespace for the custom resources, watched in both modes
    release: str
    deployment: dict[str, Any]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"]["containers"][0])

    def port(self, name: str) -> int:
        return next(int(p["containerPort"]) for p in self.container["ports"] if p["name"] == name)

    def log_text(self) -> str:
        return self.log.read_text()

    def alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"operator exited with {self.process.returncode}:\n{self.log_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _release_finalizers(namespace: str) -> None:
    """If the operator went first, drop the finalizers it left so the namespace can go."""
    for kind in ("alertrules", "analyticspipelines"):
        for name in kubectl("get", kind, "-n", namespace, "-o", "name", check=False).stdout.split():
            kubectl(
                "patch", name, "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":[]}}', check=False,
            )  # fmt: skip


@pytest.fixture(params=["all-namespaces", "namespaced"])
def operator_from_chart(
    request: pytest.FixtureRequest, render: Renderer, kubeconfig: str, tmp_path: Path
) -> Iterator[RunningOperator]:
    """The operator as the chart deploys it: cluster-wide (``watchNamespaces: []``) or watching
    the pipeline namespace only (a Role there, no ClusterRole for the workload rules)."""
    namespace = new_namespace("chart-op")
    watched = new_namespace("chart-ap")
    release = f"op{uuid.uuid4().hex[:6]}"
    # Free ports for the endpoints (the operator runs on this host, not in a pod): set through
    # the chart's values, so the args, env and probe all come from the render.
    values: dict[str, Any] = {
        "operator": {"health": {"port": _free_port()}, "metrics": {"port": _free_port()}}
    }
    values["operator"]["watchNamespaces"] = [watched] if request.param == "namespaced" else []
    objs = render(values, namespace=namespace, release=release)
    kubectl("apply", "-f", "-", stdin=dump_all(objs))
    deployment = find(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container  # the image's ENTRYPOINT (molam-analytics) runs the args

    env = container_env(container, namespace, f"{release}-operator-test")
    config = service_account_kubeconfig(
        tmp_path / "operator.kubeconfig", namespace, pod["serviceAccountName"]
    )
    # Only what a pod would have (plus a PATH and a HOME): no DATABASE_URL or other leftovers of
    # the test environment, and a kubeconfig that carries the ServiceAccount's token only.
    process_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "KUBECONFIG": str(config),
        **env,
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *container["args"]],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    running = RunningOperator(namespace, watched, release, deployment, process, log)
    try:
        yield running
    finally:
        # Delete the custom resources while the operator runs and still has its permissions (in
        # namespaced mode its Role lives in that namespace), so it releases its finalizers.
        kubectl(
            "delete", "analyticspipelines,alertrules", "--all", "-n", watched, "--timeout=60s",
            check=False, timeout=90,
        )  # fmt: skip
        _stop(process)
        _release_finalizers(watched)
        kubectl("delete", "namespace", watched, namespace, "--wait=false", check=False)
        kubectl(
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            f"app.kubernetes.io/instance={release}",
            "--wait=false",
            check=False,
        )


def _http_ok(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bytes(resp.read()) if resp.status == 200 else None
    except OSError:
        return None


def _sample(name: str, namespace: str, **spec_overrides: Any) -> dict[str, Any]:
    obj = sample(name, namespace)
    obj["spec"].update(spec_overrides)
    return obj


def create_secret(namespace: str, name: str, **data: str) -> None:
    literals = [f"--from-literal={k}={v}" for k, v in data.items()]
    kubectl("create", "secret", "generic", name, "-n", namespace, *literals)


def _children(namespace: str, name: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in ("deployments", "services", "cronjobs", "configmaps"):
        for item in kubectl_json("get", kind, "-n", namespace)["items"]:
            if item["metadata"]["name"].startswith(f"{name}-"):
                out[f"{item['kind']}/{item['metadata']['name']}"] = item
    return out


EXPECTED_CHILDREN = {
    "Deployment/analytics-api",
    "Deployment/analytics-consumer",
    "Deployment/analytics-alerts",
    "Service/analytics-api",
    "CronJob/analytics-refresh-views",
}


def count_rules(dsn: str) -> int:
    """Rows in analytics_alert_rules (on a private event loop: this test is synchronous)."""

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM analytics_alert_rules"))
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(count())
    finally:
        loop.close()


def test_operator_reconciles_with_the_charts_rbac_args_and_env(
    operator_from_chart: RunningOperator, database_url: str
):
    op = operator_from_chart
    probe = op.container["livenessProbe"]["httpGet"]
    health = op.port(probe["port"]) if isinstance(probe["port"], str) else int(probe["port"])

    # The liveness probe, exactly as rendered, answers once the operator is up.
    wait_until(
        "the operator's liveness endpoint",
        lambda: op.alive() or _http_ok(f"http://127.0.0.1:{health}{probe['path']}"),
        timeout=60,
        log=op.log,
    )
    # So does the metrics port the chart exposes.
    metrics = wait_until(
        "the operator's /metrics",
        lambda: _http_ok(f"http://127.0.0.1:{op.port('metrics')}/metrics"),
        timeout=30,
        log=op.log,
    )
    assert b"analytics_operator_" in metrics

    # A pipeline in another namespace than the operator's.
    ns = op.watched
    create_secret(ns, "analytics-db", url=database_url)
    create_secret(ns, "analytics-redis", url="redis://127.0.0.1:6379/15")
    kafka = {
        "bootstrapServers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
        "topic": f"chart.{uuid.uuid4().hex[:8]}",
        "consumerGroup": "chart-test",
    }
    pipeline = _sample("analyticspipeline.yaml", ns, kafka=kafka)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pipeline))
    uid = kubectl_json("get", "analyticspipeline", "analytics", "-n", ns)["metadata"]["uid"]

    def children_ready() -> dict[str, dict[str, Any]] | None:
        op.alive()
        found = _children(ns, "analytics")
        return found if found.keys() >= EXPECTED_CHILDREN else None

    children = wait_until("the pipeline's children", children_ready, timeout=90, log=op.log)
    for key in EXPECTED_CHILDREN:
        owners = children[key]["metadata"].get("ownerReferences", [])
        assert [o["uid"] for o in owners] == [uid], key

    # Status is written (the /status subresource).
    wait_until(
        "the pipeline's status",
        lambda: (
            kubectl_json("get", "analyticspipeline", "analytics", "-n", ns)
            .get("status", {})
            .get("phase")
        ),
        timeout=60,
        log=op.log,
    )

    # A child deleted by hand comes back (watch on the children, create).
    old = children["Deployment/analytics-alerts"]["metadata"]["uid"]
    kubectl("delete", "deployment", "analytics-alerts", "-n", ns)
    wait_until(
        "the deleted child to be restored",
        lambda: (
            (d := _children(ns, "analytics").get("Deployment/analytics-alerts"))
            and d["metadata"]["uid"] != old
        ),
        timeout=60,
        log=op.log,
    )

    # An AlertRule is synced into the pipeline's database (Secret read, finalizer, status).
    rule = _sample("alertrule.yaml", ns)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(rule))
    wait_until(
        "the AlertRule's row in the pipeline's database",
        lambda: count_rules(database_url) == 1,
        timeout=60,
        log=op.log,
    )
    wait_until(
        "the AlertRule's status",
        lambda: (
            kubectl_json("get", "alertrule", rule["metadata"]["name"], "-n", ns)
            .get("status", {})
            .get("observedGeneration")
        ),
        timeout=60,
        log=op.log,
    )
    kubectl("delete", "alertrule", rule["metadata"]["name"], "-n", ns, "--timeout=60s")
    wait_until(
        "the AlertRule's row to go",
        lambda: count_rules(database_url) == 0,
        timeout=30,
        log=op.log,
    )
    op.alive()

    problems = [
        line
        for line in op.log_text().splitlines()
        if any(pattern.search(line.lower()) for pattern in PERMISSION_ERRORS)
    ]
    assert not problems, "permission errors in the operator's log:\n" + "\n".join(problems)
