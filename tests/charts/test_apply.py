"""The rendered chart applied to the real kube-apiserver of the local stack: server-side dry run,
then for real in a fresh namespace, and a real `helm install` / `upgrade` / `uninstall`."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    ALL_FEATURES,
    CHART,
    Renderer,
    dump_all,
    kubectl,
    kubectl_json,
    new_namespace,
    run_helm,
)

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("crds_installed")]

STANDIN = Path(__file__).with_name("monitoring-crds-standin.yaml")


@pytest.fixture(scope="module")
def monitoring_crds(kubeconfig: str) -> None:
    """PrometheusRule and PodMonitor CRDs: the stand-ins, unless a cluster has the real ones."""
    for crd in ("prometheusrules", "podmonitors"):
        name = f"{crd}.monitoring.coreos.com"
        if kubectl("get", "crd", name, check=False).returncode:
            kubectl("apply", "-f", str(STANDIN))
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def _release() -> str:
    return f"t{uuid.uuid4().hex[:6]}"


def _cleanup_cluster_scoped(release: str) -> None:
    kubectl(
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        f"app.kubernetes.io/instance={release}",
        "--wait=false",
        check=False,
    )


def test_all_features_apply_for_real(render: Renderer, namespace: str, monitoring_crds):
    release = _release()
    objs = render(ALL_FEATURES, namespace=namespace, release=release)
    manifest = dump_all(objs)
    try:
        dry = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifest)
        assert dry.stdout.count("(server dry run)") == len(objs), dry.stdout
        kubectl("apply", "-f", "-", stdin=manifest)
        for o in objs:
            where = ["-n", o["metadata"]["namespace"]] if "namespace" in o["metadata"] else []
            got = kubectl_json("get", _resource(o), o["metadata"]["name"], *where)
            assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == release
        # The controller-manager accepts the hardened pod spec and creates the operator's pod.
        pods = _wait_for_pods(namespace, f"app.kubernetes.io/instance={release}")
        sc = pods[0]["spec"]["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    finally:
        _cleanup_cluster_scoped(release)


def test_namespaced_mode_applies(render: Renderer, namespace: str):
    other = new_namespace("chart-watch")
    release = _release()
    try:
        objs = render(
            {"operator": {"watchNamespaces": ["", other]}}, namespace=namespace, release=release
        )
        kubectl("apply", "--dry-run=server", "-f", "-", stdin=dump_all(objs))
        kubectl("apply", "-f", "-", stdin=dump_all(objs))
        sa = f"system:serviceaccount:{namespace}:{release}-molam-analytics"
        for ns in (namespace, other):
            assert _can(sa, "patch", "analyticspipelines.analytics.molam.io", ns)
            assert _can(sa, "create", "deployments.apps", ns)
            assert _can(sa, "get", "secrets", ns)
            assert not _can(sa, "list", "secrets", ns)
        assert not _can(sa, "create", "deployments.apps", "default")
        assert _can(sa, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)
        _cleanup_cluster_scoped(release)


def test_helm_install_upgrade_uninstall(helm_home: Path, namespace: str, kubeconfig: str):
    release = _release()
    base = ["--namespace", namespace, "--kubeconfig", kubeconfig]
    operator = f"{release}-molam-analytics-operator"
    try:
        run_helm(
            helm_home,
            "install",
            release,
            str(CHART),
            *base,
            "--set",
            "pipeline.create=true",
            timeout=120,
        )
        dep = kubectl_json("get", "deployment", operator, "-n", namespace)
        before = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert kubectl_json("get", "analyticspipeline", "analytics", "-n", namespace)
        run_helm(
            helm_home,
            "upgrade",
            release,
            str(CHART),
            *base,
            "--set",
            "pipeline.create=true",
            "--set",
            "operator.logLevel=DEBUG",
            timeout=120,
        )
        dep = kubectl_json("get", "deployment", operator, "-n", namespace)
        assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != before
        assert dep["metadata"]["generation"] == 2
        # No hooks: the chart's pre-delete Job needs a running operator, and no pod runs in
        # these namespaces (NO_PODS), so with hooks the uninstall waits for it until it fails.
        run_helm(helm_home, "uninstall", release, *base, "--no-hooks", timeout=120)
        left = kubectl(
            "get", "clusterrole", "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
        )
        assert left.stdout.strip() == ""
    finally:
        run_helm(helm_home, "uninstall", release, *base, "--no-hooks", check=False)
        _cleanup_cluster_scoped(release)


def _resource(obj: dict[str, Any]) -> str:
    """kind.group as kubectl understands it (deployment.apps, serviceaccount, ...)."""
    group = obj["apiVersion"].rpartition("/")[0]
    return f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()


def _can(user: str, verb: str, resource: str, namespace: str | None) -> bool:
    args = ["auth", "can-i", verb, resource, "--as", user]
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    return kubectl(*args, check=False).stdout.strip() == "yes"


def _wait_for_pods(namespace: str, selector: str, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        pods = kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
        if pods:
            return pods
        if time.monotonic() > deadline:
            pytest.fail(f"no pod for {selector} in {namespace} after {timeout}s")
        time.sleep(0.5)
